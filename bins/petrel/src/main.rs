//! `petrel`: the operator CLI of a Petrel host agent. It talks to the
//! agent's HTTP API (`/v1`) only: it runs no VM itself and needs no root.
//!
//! ```text
//! petrel sandbox create [--template base] [--timeout SECS] [--metadata k=v ...]   # prints the id
//! petrel sandbox list [--state running,paused] [--metadata k=v] [--json]
//! petrel sandbox info ID [--json]
//! petrel sandbox exec ID [--user U] [--cwd DIR] [--env K=V] [-i] [--json] -- CMD...
//! petrel sandbox shell ID [--cmd CMD] [--user U]        # interactive terminal
//! petrel sandbox pause ID | resume ID [--timeout SECS]
//! petrel sandbox snapshot ID NAME                       # then: sandbox create --template NAME
//! petrel sandbox kill ID... | --all
//! petrel snapshot list [--json] | delete NAME...
//! petrel template list [--json] | delete NAME...
//! ```
//!
//! Global options: `--url` (env `PETREL_URL`, default
//! `http://127.0.0.1:8080`), `--api-key` (env `PETREL_API_KEY`, else
//! `E2B_API_KEY`; sent as `X-API-KEY`), `--config FILE` (TOML with `url`
//! and `api_key`; default `$XDG_CONFIG_HOME/petrel/config.toml` or
//! `~/.config/petrel/config.toml`). A flag beats the environment, which
//! beats the file.
//!
//! Output: ids, tables and `key: value` blocks for people; `--json` prints
//! the agent's JSON. `exec` streams the command's stdout and stderr as they
//! come and exits with its exit code (one argument is a shell command
//! line, several are a program and its arguments); `shell` puts the local
//! terminal in raw mode, follows its size and exits with the remote shell's
//! exit code. Create, pause, resume and snapshot show a spinner on stderr
//! when it is a terminal.
//!
//! Errors are one line on stderr and exit status 1: the agent's message
//! and code (`error: sandbox 0123 not found (sandbox_not_found, HTTP
//! 404)`), or the URL that could not be reached.
//!
//! ```sh
//! ID=$(petrel sandbox create --metadata owner=me)
//! petrel sandbox exec $ID -- 'echo hello; exit 3'; echo $?   # hello, 3
//! petrel sandbox shell $ID
//! petrel sandbox kill $ID
//! ```

use std::process::ExitCode;

use clap::Parser as _;
use petrel::cli::Cli;
use petrel::client::Client;
use petrel::config::Sources;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(status) => ExitCode::from(status),
        // The reader of our output went away (`petrel ... | head`): stop
        // quietly, as other command-line tools do.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let settings = Sources {
        url: cli.global.url,
        api_key: cli.global.api_key,
        config: cli.global.config,
        ..Sources::default()
    }
    .with_environment()
    .resolve()?;
    let client = Client::new(&settings.url, settings.api_key.as_deref())?;
    petrel::commands::run(&client, cli.command).await
}
