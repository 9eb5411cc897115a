//! placeholder
mod client;
mod error;
mod models;
mod transport;
#[cfg(test)]
mod testing;
pub use client::FcClient;
pub use error::{FcError, LaunchError};
pub use models::*;
