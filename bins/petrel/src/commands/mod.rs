//! One function per subcommand, each returning the exit status petrel
//! ends with (0, or the remote command's for `exec` and `shell`).
//!
//! - [`sandbox`]: create, list, info, pause, resume, kill, snapshot;
//! - [`exec`]: run a command, streaming its output;
//! - [`snapshot`], [`template`]: list and delete.

pub mod exec;
pub mod sandbox;
pub mod snapshot;
pub mod template;

use anyhow::Result;

use crate::cli::{Command, SandboxCommand, SnapshotCommand, TemplateCommand};
use crate::client::Client;

/// Runs `command` against the agent `client` talks to.
pub async fn run(client: &Client, command: Command) -> Result<u8> {
    match command {
        Command::Sandbox(command) => match command {
            SandboxCommand::Create(args) => sandbox::create(client, args).await,
            SandboxCommand::List(args) => sandbox::list(client, args).await,
            SandboxCommand::Info { id, json } => sandbox::info(client, &id, json.json).await,
            SandboxCommand::Exec(args) => exec::exec(client, args).await,
            SandboxCommand::Shell(args) => crate::shell::run(client, args).await,
            SandboxCommand::Pause { id, json } => sandbox::pause(client, &id, json.json).await,
            SandboxCommand::Resume { id, timeout, json } => {
                sandbox::resume(client, &id, timeout, json.json).await
            }
            SandboxCommand::Kill { ids, all } => sandbox::kill(client, ids, all).await,
            SandboxCommand::Snapshot { id, name, json } => {
                sandbox::snapshot(client, &id, &name, json.json).await
            }
        },
        Command::Snapshot(command) => match command {
            SnapshotCommand::List { json } => snapshot::list(client, json.json).await,
            SnapshotCommand::Delete { names } => snapshot::delete(client, &names).await,
        },
        Command::Template(command) => match command {
            TemplateCommand::List { json } => template::list(client, json.json).await,
            TemplateCommand::Delete { names } => template::delete(client, &names).await,
        },
    }
}

/// A remote exit code as petrel's: 0-255 as they are, anything else (a
/// signal's -1) as 255.
pub fn exit_status(code: i64) -> u8 {
    u8::try_from(code).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_outside_a_byte_become_255() {
        let statuses = [0, 7, 255, 256, -1].map(exit_status);

        assert_eq!(statuses, [0, 7, 255, 255, 255]);
    }
}
