//! The one rollback mechanism of multi-step operations (boot, resume,
//! snapshot, template warm-up): each step that makes something pushes how
//! to unmake it; when a later step fails, [`Rollback::unwind`] runs the
//! undos newest first on the operation's subject (the sandbox, or what the
//! operation made so far), tries every one even when some fail, and logs
//! all that failed; [`Rollback::commit`] keeps what was made.
//!
//! ```ignore
//! let mut undo = Rollback::new(format!("resume of sandbox {id}"));
//! provider.restore(...).await?;
//! undo.push("release the root disk", |s: &mut Sandbox| Box::pin(s.release_disk()));
//! if let Err(err) = next_step().await {
//!     return Err(undo.unwind(&mut sandbox, err).await);
//! }
//! undo.commit();
//! ```

use std::future::Future;
use std::pin::Pin;

use crate::SandboxError;

/// A boxed future borrowing the subject for `'a`.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How to unmake one step, given the operation's subject.
type Undo<T> = Box<dyn for<'x> FnOnce(&'x mut T) -> BoxFuture<'x, Result<(), SandboxError>> + Send>;

/// The undo steps of one operation under way on a `T`.
#[must_use = "an operation's rollback is either committed or unwound"]
pub(crate) struct Rollback<T> {
    operation: String,
    steps: Vec<(&'static str, Undo<T>)>,
}

impl<T: Send> Rollback<T> {
    /// `operation` names it in logs ("boot of sandbox 0123…").
    pub(crate) fn new(operation: impl Into<String>) -> Self {
        Self {
            operation: operation.into(),
            steps: Vec::new(),
        }
    }

    /// Records how to unmake what the step just done made.
    pub(crate) fn push<F>(&mut self, step: &'static str, undo: F)
    where
        F: for<'x> FnOnce(&'x mut T) -> BoxFuture<'x, Result<(), SandboxError>> + Send + 'static,
    {
        self.steps.push((step, Box::new(undo)));
    }

    /// The operation succeeded: what it made stays.
    pub(crate) fn commit(self) {
        drop(self.steps);
    }

    /// The operation failed with `cause`: every undo runs, newest first;
    /// those that fail are logged together. Returns `cause`.
    pub(crate) async fn unwind<E: std::fmt::Display>(self, subject: &mut T, cause: E) -> E {
        let mut failed = Vec::new();
        for (step, undo) in self.steps.into_iter().rev() {
            if let Err(err) = undo(subject).await {
                failed.push(format!("{step}: {err}"));
            }
        }
        if failed.is_empty() {
            tracing::warn!(operation = %self.operation, %cause, "failed; rolled back");
        } else {
            tracing::error!(operation = %self.operation, %cause, ?failed, "failed; rollback incomplete");
        }
        cause
    }
}

pub(crate) use crate::disk::remove_dir_if_exists;

#[cfg(test)]
mod tests {
    use super::*;

    fn io(what: &'static str) -> SandboxError {
        SandboxError::Io {
            what,
            path: "/x".into(),
            source: std::io::Error::other("boom"),
        }
    }

    #[tokio::test]
    async fn unwind_runs_every_undo_newest_first_even_after_one_fails() {
        // Arrange
        let mut log: Vec<&str> = Vec::new();
        let mut undo = Rollback::new("test");
        undo.push("first", |log: &mut Vec<&str>| {
            Box::pin(async move {
                log.push("first");
                Ok(())
            })
        });
        undo.push("second", |log: &mut Vec<&str>| {
            Box::pin(async move {
                log.push("second");
                Err(io("second failed"))
            })
        });
        undo.push("third", |log: &mut Vec<&str>| {
            Box::pin(async move {
                log.push("third");
                Ok(())
            })
        });

        // Act
        let cause = undo.unwind(&mut log, io("the cause")).await;

        // Assert
        assert_eq!(log, ["third", "second", "first"]);
        assert!(cause.to_string().contains("the cause"), "{cause}");
    }
}
