//! `lease-sync admin …`: helpers for the admin API's configuration.
//!
//! `admin hash-token` turns a token into the `sha256:<hex>` form `[admin] tokens` accepts, so
//! the configuration holds no usable secret. The token is read from stdin, never from the
//! command line, where shell history and `ps` would keep it.

use std::io::Write as _;
use std::io::{BufRead, IsTerminal as _};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Subcommand;

use crate::config::{MIN_ADMIN_TOKEN_LEN, SHA256_PREFIX, hash_token};

/// Prefix of generated tokens ("lease-sync admin token"), so a leaked one is recognisable.
const GENERATED_PREFIX: &str = "lsat_";

/// Random bytes in a generated token.
const GENERATED_BYTES: usize = 32;

/// Arguments of `admin`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// What to do.
    #[command(subcommand)]
    command: AdminCommand,
}

/// The `admin` subcommands.
#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Print the `sha256:…` form of an admin token for `[admin] tokens`. Reads the token from
    /// the first line of stdin (never from the command line, which shell history and `ps`
    /// keep); with --generate, makes a new random token instead.
    HashToken(HashTokenArgs),
}

/// Arguments of `admin hash-token`.
#[derive(Debug, clap::Args)]
struct HashTokenArgs {
    /// Generate a new random token: prints the token on line 1 and its `sha256:…` on line 2.
    #[arg(long)]
    generate: bool,
}

/// Runs an `admin` subcommand.
pub fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AdminCommand::HashToken(args) if args.generate => {
            let token = generate_token();
            // A closed pipe (`| head -n 1`) is the reader's choice, not a crash.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{token}").and_then(|()| writeln!(out, "{}", hash_token(&token)));
            eprintln!(
                "line 1 is the token, for whoever calls the admin API (Authorization: Bearer …); line 2 goes into [admin] tokens"
            );
        }
        AdminCommand::HashToken(_) => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!(
                    "type or paste the token, then press Enter (it will show; a pipe is better)"
                );
            }
            let token = read_token(stdin.lock())?;
            let _ = writeln!(std::io::stdout().lock(), "{}", hash_token(&token));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A new token: [`GENERATED_PREFIX`] and [`GENERATED_BYTES`] random bytes (from the OS-seeded
/// CSPRNG) in unpadded base64url, so it is safe in headers, URLs and shells.
fn generate_token() -> String {
    let bytes: [u8; GENERATED_BYTES] = rand::random();
    format!("{GENERATED_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The token on the first line of `input`, without its line ending, checked to be one the
/// admin API could accept. Errors never quote it.
fn read_token(mut input: impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("cannot read the token from stdin")?;
    let token = line.strip_suffix('\n').unwrap_or(&line);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.is_empty() {
        bail!(
            "no token on stdin: pipe one in (printf '%s\\n' \"$TOKEN\" | lease-sync admin hash-token), or make one with --generate"
        );
    }
    if token
        .get(..SHA256_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SHA256_PREFIX))
    {
        bail!("this is already a `sha256:` hash; hash-token takes the token itself");
    }
    if token.trim() != token {
        bail!(
            "the token starts or ends with whitespace, which an Authorization header cannot carry; remove it"
        );
    }
    // What `Authorization: Bearer <token>` can carry; any other token could never be sent.
    if !token.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
        bail!("the token must be printable ASCII: it is sent in an HTTP header");
    }
    if token.len() < MIN_ADMIN_TOKEN_LEN {
        bail!("the token must be at least {MIN_ADMIN_TOKEN_LEN} characters");
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &str) -> Result<String, String> {
        read_token(input.as_bytes()).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn the_first_line_is_the_token_without_its_line_ending() {
        let token = "operator-token-0123456789";
        for input in [
            token.to_owned(),
            format!("{token}\n"),
            format!("{token}\r\n"),
            format!("{token}\nsecond line ignored\n"),
        ] {
            assert_eq!(read(&input).as_deref(), Ok(token), "{input:?}");
        }
        assert_eq!(
            read("with inner space 0123\n").as_deref(),
            Ok("with inner space 0123")
        );
    }

    #[test]
    fn unusable_tokens_are_refused_without_being_quoted() {
        for (input, needle) in [
            ("", "no token"),
            ("\n", "no token"),
            ("SECRET-0123456\n", "at least 16"),
            (" SECRET-0123456789\n", "whitespace"),
            ("SECRET-0123456789 \n", "whitespace"),
            ("SECRET-0123456789\t\n", "whitespace"),
            ("SECRET-0123456789-é\n", "printable ASCII"),
            ("SECRET-01234567\u{7}89\n", "printable ASCII"),
            (
                "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n",
                "already",
            ),
            ("SHA256:SECRET\n", "already"),
        ] {
            let message = read(input).expect_err(input);
            assert!(message.contains(needle), "{input:?}: {message}");
            assert!(
                !message.contains("SECRET") && !message.contains("9f86"),
                "{message}"
            );
        }
    }

    #[test]
    fn generated_tokens_are_long_random_and_usable() {
        let token = generate_token();
        let encoded = token.strip_prefix(GENERATED_PREFIX).unwrap_or_default();
        let bytes = URL_SAFE_NO_PAD.decode(encoded).unwrap_or_default();
        assert_eq!(bytes.len(), GENERATED_BYTES, "{token}");
        assert_eq!(
            read(&format!("{token}\n")),
            Ok(token.clone()),
            "hash-token takes it"
        );
        assert_ne!(generate_token(), token);
    }
}
