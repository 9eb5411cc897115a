//! The command line (clap derive): global options and the subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Operate a Petrel host agent: sandboxes, snapshots and templates.
#[derive(Debug, Parser)]
#[command(name = "petrel", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the agent is and how to authenticate.
#[derive(Debug, Args)]
pub struct Global {
    /// The host agent's URL [default: the config file's `url`, else
    /// http://127.0.0.1:8080]
    #[arg(
        long,
        global = true,
        env = "PETREL_URL",
        hide_env_values = true,
        value_name = "URL",
        help_heading = "Global options"
    )]
    pub url: Option<String>,
    /// Sent as X-API-KEY on every request [default: $E2B_API_KEY, else the
    /// config file's `api_key`]
    #[arg(
        long,
        global = true,
        env = "PETREL_API_KEY",
        hide_env_values = true,
        value_name = "KEY",
        help_heading = "Global options"
    )]
    pub api_key: Option<String>,
    /// TOML file with `url` and `api_key` [default:
    /// $XDG_CONFIG_HOME/petrel/config.toml, else ~/.config/petrel/config.toml]
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, run commands in and destroy sandboxes.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Named snapshots of sandboxes.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Templates sandboxes start from.
    #[command(subcommand)]
    Template(TemplateCommand),
}

/// `--json`: print the agent's JSON instead of the human form.
#[derive(Debug, Clone, Copy, Args)]
pub struct Json {
    /// Print the agent's JSON reply.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Boot a sandbox and print its id.
    Create(CreateArgs),
    /// List sandboxes (oldest first).
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Show one sandbox.
    Info {
        /// Sandbox id.
        id: String,
        #[command(flatten)]
        json: Json,
    },
    /// Run a command; its output streams, its exit code is petrel's.
    Exec(ExecArgs),
    /// An interactive terminal in the sandbox (exit it with `exit`).
    #[command(visible_alias = "connect")]
    Shell(ShellArgs),
    /// Save a running sandbox to disk.
    Pause {
        /// Sandbox id.
        id: String,
        #[command(flatten)]
        json: Json,
    },
    /// Start a paused sandbox again.
    Resume {
        /// Sandbox id.
        id: String,
        /// New time to live, in seconds from now [default: the agent's]
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        #[command(flatten)]
        json: Json,
    },
    /// Destroy sandboxes (in any state).
    #[command(visible_alias = "rm")]
    Kill {
        /// Sandbox ids.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every sandbox the agent has.
        #[arg(long)]
        all: bool,
    },
    /// Save a running sandbox as a named snapshot (it keeps running).
    Snapshot {
        /// Sandbox id.
        id: String,
        /// The snapshot's name; create sandboxes from it with
        /// `sandbox create --template NAME`.
        name: String,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Template or snapshot to start from.
    #[arg(long, short, default_value = "base", value_name = "NAME")]
    pub template: String,
    /// Time to live in seconds [default: the agent's, 300]
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Metadata pair (repeatable).
    #[arg(long = "metadata", short, value_name = "KEY=VALUE", value_parser = key_value)]
    pub metadata: Vec<(String, String)>,
    /// Environment variable of every process in the sandbox (repeatable).
    #[arg(long = "env", short, value_name = "KEY=VALUE", value_parser = key_value)]
    pub env: Vec<(String, String)>,
    /// Virtual CPUs [default: the agent's]
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Memory in MiB [default: the agent's]
    #[arg(long, value_name = "MIB")]
    pub memory_mb: Option<u32>,
    #[command(flatten)]
    pub json: Json,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sandboxes in these states (comma-separated: running,paused).
    #[arg(long, value_name = "STATES")]
    pub state: Option<String>,
    /// Only sandboxes with this metadata pair (repeatable; all must match).
    #[arg(long = "metadata", short, value_name = "KEY=VALUE", value_parser = key_value)]
    pub metadata: Vec<(String, String)>,
    /// Only sandboxes created from this template or snapshot.
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    #[command(flatten)]
    pub json: Json,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Sandbox id.
    pub id: String,
    /// The command. One argument is a shell command line (`'echo $HOME;
    /// exit 3'`); several are a program and its arguments, passed as they
    /// are. Either way it runs through `/bin/bash -l -c`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
    /// Guest user [default: user]
    #[arg(long, short)]
    pub user: Option<String>,
    /// Working directory [default: the user's home]
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Environment variable (repeatable).
    #[arg(long = "env", short, value_name = "KEY=VALUE", value_parser = key_value)]
    pub env: Vec<(String, String)>,
    /// Give the command petrel's stdin (read to its end first; UTF-8).
    #[arg(long, short = 'i')]
    pub stdin: bool,
    /// Deadline of the run in seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Print the agent's JSON result ({stdout, stderr, stdout_truncated,
    /// stderr_truncated, exit_code, pid}; each stream capped at the agent's
    /// exec_output_limit) once the command has finished, instead of
    /// streaming.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Sandbox id.
    pub id: String,
    /// A shell command line to run instead of an interactive login bash.
    #[arg(long, value_name = "CMD")]
    pub cmd: Option<String>,
    /// Guest user [default: user]
    #[arg(long, short)]
    pub user: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List snapshots (oldest first).
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        json: Json,
    },
    /// Delete snapshots (refused while sandboxes created from them exist).
    #[command(visible_alias = "rm")]
    Delete {
        /// Snapshot names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// List templates.
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        json: Json,
    },
    /// Delete templates' records (refused while a sandbox or snapshot uses
    /// them; the images stay).
    #[command(visible_alias = "rm")]
    Delete {
        /// Template names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `KEY=VALUE` as a pair; the key must not be empty.
fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_everything_after_the_double_dash() {
        let cli = Cli::try_parse_from([
            "petrel", "sandbox", "exec", "abc", "--", "ls", "-l", "--json",
        ])
        .unwrap();

        let Command::Sandbox(SandboxCommand::Exec(args)) = cli.command else {
            panic!("not exec");
        };
        assert_eq!(args.command, ["ls", "-l", "--json"]);
        assert!(!args.json);
    }

    #[test]
    fn metadata_must_be_key_value() {
        let parsed = [
            key_value("team=blue=x"),
            key_value("novalue"),
            key_value("=x"),
        ];

        assert_eq!(parsed[0], Ok(("team".to_string(), "blue=x".to_string())));
        assert!(parsed[1].is_err());
        assert!(parsed[2].is_err());
    }
}
