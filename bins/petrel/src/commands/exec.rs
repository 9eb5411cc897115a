//! `petrel sandbox exec ID [options] -- CMD...`: runs a command through
//! `POST /v1/sandboxes/{id}/exec/stream`, writing its stdout and stderr to
//! petrel's as the events come, and ends with its exit code. With `--json`
//! it uses `POST .../exec` and prints the agent's result instead.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cli::ExecArgs;
use crate::client::{self, Client, segment};
use crate::output;

use super::exit_status;

/// `'…'`-quotes `arg` for bash when it holds anything but safe characters.
pub fn quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'/' | b'=' | b':' | b',' | b'+' | b'@' | b'%'
                )
        });
    if safe {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The shell command line of `command`: one argument as it is, several
/// quoted and joined.
pub fn command_line(command: &[String]) -> String {
    match command {
        [line] => line.clone(),
        args => args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "),
    }
}

/// The body of `exec` and `exec/stream`.
fn body(args: &ExecArgs, stdin: Option<String>) -> Value {
    let mut body = json!({"cmd": command_line(&args.command)});
    if let Some(user) = &args.user {
        body["user"] = json!(user);
    }
    if let Some(cwd) = &args.cwd {
        body["cwd"] = json!(cwd);
    }
    if !args.env.is_empty() {
        body["env"] = json!(args.env.iter().cloned().collect::<BTreeMap<_, _>>());
    }
    if let Some(timeout) = args.timeout {
        body["timeout_s"] = json!(timeout);
    }
    if let Some(stdin) = stdin {
        body["stdin"] = json!(stdin);
    }
    body
}

#[derive(Debug, Deserialize)]
struct Data {
    data: String,
}

#[derive(Debug, Deserialize)]
struct Exit {
    exit_code: i64,
}

#[derive(Debug, Deserialize)]
struct StreamError {
    code: String,
    message: String,
}

pub async fn exec(client: &Client, args: ExecArgs) -> Result<u8> {
    let stdin = if args.stdin {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("reading stdin (it must be UTF-8)")?;
        Some(input)
    } else {
        None
    };
    let path = format!("/v1/sandboxes/{}/exec", segment(&args.id));
    let body = body(&args, stdin);
    if args.json {
        let reply = client.post(&path, &body).await?;
        output::print_json(&reply)?;
        let code = reply
            .value
            .get("exit_code")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        return Ok(exit_status(code));
    }
    let mut events = client.events(&format!("{path}/stream"), &body).await?;
    let parse = |data: &str| -> Result<Value> {
        serde_json::from_str(data).with_context(|| format!("an event that is not JSON: {data}"))
    };
    while let Some(event) = events.next().await? {
        match event.event.as_str() {
            "stdout" => {
                let Data { data } = output::view(&parse(&event.data)?)?;
                let mut out = std::io::stdout().lock();
                out.write_all(data.as_bytes())?;
                out.flush()?;
            }
            "stderr" => {
                let Data { data } = output::view(&parse(&event.data)?)?;
                let mut err = std::io::stderr().lock();
                err.write_all(data.as_bytes())?;
                err.flush()?;
            }
            "exit" => {
                let Exit { exit_code } = output::view(&parse(&event.data)?)?;
                return Ok(exit_status(exit_code));
            }
            "error" => {
                let StreamError { code, message } = output::view(&parse(&event.data)?)?;
                return Err(client::Error::Remote { code, message }.into());
            }
            _ => {}
        }
    }
    bail!("the event stream ended before the command's exit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_argument_is_a_command_line_as_it_is() {
        let line = command_line(&["echo $HOME; exit 3".to_owned()]);

        assert_eq!(line, "echo $HOME; exit 3");
    }

    #[test]
    fn several_arguments_are_quoted_so_they_reach_the_program_unchanged() {
        let args = ["sh", "-c", "echo 'a b' >&2", "", "x=1"].map(String::from);

        let line = command_line(&args);

        assert_eq!(line, r"sh -c 'echo '\''a b'\'' >&2' '' x=1");
    }
}
