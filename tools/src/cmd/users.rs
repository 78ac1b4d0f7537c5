//! `sluicectl users`: SCRAM users with DescribeUserScramCredentials and
//! AlterUserScramCredentials (as `kafka-configs.sh --entity-type users --alter --add-config
//! 'SCRAM-SHA-256=[...]'` does). As Kafka's AdminClient, the client draws the salt and
//! computes the salted password; the password itself never leaves this process.

use std::io::Write;

use bytes::Bytes;
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, DescribeUserScramCredentialsRequest,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use sluice::security::scram::{ScramCredential, ScramMechanism, MAX_ITERATIONS, MIN_ITERATIONS};

use crate::client::check;
use crate::output::{write_json, Format, Table};
use crate::{Ctx, UsageError};

/// Bytes of salt drawn per credential.
const SALT_LEN: usize = 32;

/// The `users` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum UsersCmd {
    /// Every user with a SCRAM credential, with its mechanisms and iterations.
    List,
    /// The SCRAM mechanisms and iterations of the users named.
    Describe {
        /// User names.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Add or replace a user's SCRAM credential for one mechanism.
    Set {
        /// The user name.
        user: String,
        /// SCRAM-SHA-256 or SCRAM-SHA-512.
        #[arg(long)]
        mechanism: String,
        /// The password (or the SLUICE_SCRAM_PASSWORD environment variable, which stays out
        /// of the process list).
        #[arg(long, env = "SLUICE_SCRAM_PASSWORD", hide_env_values = true)]
        password: String,
        /// PBKDF2 iterations (4096..=16384).
        #[arg(long, default_value_t = MIN_ITERATIONS)]
        iterations: u32,
    },
    /// Remove a user's SCRAM credential for one mechanism.
    Delete {
        /// The user name.
        user: String,
        /// SCRAM-SHA-256 or SCRAM-SHA-512.
        #[arg(long)]
        mechanism: String,
    },
}

/// One credential of a user, as described.
#[derive(Debug, Serialize)]
struct Credential {
    mechanism: &'static str,
    iterations: i32,
}

/// One described user.
#[derive(Debug, Serialize)]
struct User {
    user: String,
    credentials: Vec<Credential>,
}

fn mechanism(name: &str) -> Result<ScramMechanism, UsageError> {
    ScramMechanism::from_name(&name.to_ascii_uppercase()).ok_or_else(|| {
        UsageError(format!(
            "unknown mechanism '{name}': use SCRAM-SHA-256 or SCRAM-SHA-512"
        ))
    })
}

fn mechanism_name(code: i8) -> &'static str {
    ScramMechanism::from_kafka_type(code).map_or("UNKNOWN", ScramMechanism::name)
}

fn describe(ctx: &Ctx, users: Option<&[String]>) -> anyhow::Result<Vec<User>> {
    let req = DescribeUserScramCredentialsRequest::default().with_users(users.map(|u| {
        u.iter()
            .map(|n| UserName::default().with_name(StrBytes::from_string(n.clone())))
            .collect()
    }));
    let mut cluster = ctx.cluster()?;
    let resp = cluster.any().call(&req, 0)?;
    check(
        resp.error_code,
        || "describing SCRAM users".into(),
        resp.error_message.as_deref(),
    )?;
    let mut out = Vec::new();
    for r in &resp.results {
        check(
            r.error_code,
            || format!("describing user '{}'", r.user.as_str()),
            r.error_message.as_deref(),
        )?;
        out.push(User {
            user: r.user.to_string(),
            credentials: r
                .credential_infos
                .iter()
                .map(|c| Credential {
                    mechanism: mechanism_name(c.mechanism),
                    iterations: c.iterations,
                })
                .collect(),
        });
    }
    out.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(out)
}

fn print_users(ctx: &Ctx, users: &[User], out: &mut impl Write) -> anyhow::Result<()> {
    match ctx.format {
        Format::Json => write_json(out, &users)?,
        Format::Table => {
            let mut t = Table::new(&["USER", "MECHANISM", "ITERATIONS"]);
            for u in users {
                for c in &u.credentials {
                    t.row(vec![
                        u.user.clone(),
                        c.mechanism.to_string(),
                        c.iterations.to_string(),
                    ]);
                }
            }
            t.write(out)?;
        }
    }
    Ok(())
}

/// Sends one alteration and checks the result of its one user.
fn alter(ctx: &Ctx, req: AlterUserScramCredentialsRequest, user: &str) -> anyhow::Result<()> {
    let mut cluster = ctx.cluster()?;
    let resp = cluster.any().call(&req, 0)?;
    let r = resp
        .results
        .iter()
        .find(|r| r.user.as_str() == user)
        .ok_or_else(|| {
            anyhow::anyhow!("AlterUserScramCredentials answered nothing for '{user}'")
        })?;
    check(
        r.error_code,
        || format!("altering the SCRAM credentials of user '{user}'"),
        r.error_message.as_deref(),
    )?;
    Ok(())
}

/// Runs a `users` subcommand.
pub fn run(ctx: &Ctx, cmd: UsersCmd, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd {
        UsersCmd::List => {
            let users = describe(ctx, None)?;
            print_users(ctx, &users, out)?;
        }
        UsersCmd::Describe { users } => {
            let described = describe(ctx, Some(&users))?;
            print_users(ctx, &described, out)?;
        }
        UsersCmd::Set {
            user,
            mechanism: mech,
            password,
            iterations,
        } => {
            let mech = mechanism(&mech)?;
            if user.is_empty() {
                return Err(UsageError("the user name must not be empty".into()).into());
            }
            if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
                return Err(UsageError(format!(
                    "--iterations must be in {MIN_ITERATIONS}..={MAX_ITERATIONS}"
                ))
                .into());
            }
            if password.is_empty() {
                return Err(UsageError("the password must not be empty".into()).into());
            }
            let salt: Vec<u8> = (0..SALT_LEN).map(|_| rand::random::<u8>()).collect();
            let salted = ScramCredential::salted_password(mech, &password, &salt, iterations);
            let req = AlterUserScramCredentialsRequest::default().with_upsertions(vec![
                ScramCredentialUpsertion::default()
                    .with_name(StrBytes::from_string(user.clone()))
                    .with_mechanism(mech.kafka_type())
                    .with_iterations(i32::try_from(iterations).unwrap_or(i32::MAX))
                    .with_salt(Bytes::from(salt))
                    .with_salted_password(Bytes::from(salted)),
            ]);
            alter(ctx, req, &user)?;
            match ctx.format {
                Format::Json => write_json(
                    out,
                    &serde_json::json!({
                        "user": user, "mechanism": mech.name(), "iterations": iterations
                    }),
                )?,
                Format::Table => writeln!(
                    out,
                    "Set the {} credential of user '{user}' ({iterations} iterations).",
                    mech.name()
                )?,
            }
        }
        UsersCmd::Delete {
            user,
            mechanism: mech,
        } => {
            let mech = mechanism(&mech)?;
            let req = AlterUserScramCredentialsRequest::default().with_deletions(vec![
                ScramCredentialDeletion::default()
                    .with_name(StrBytes::from_string(user.clone()))
                    .with_mechanism(mech.kafka_type()),
            ]);
            alter(ctx, req, &user)?;
            match ctx.format {
                Format::Json => write_json(
                    out,
                    &serde_json::json!({ "user": user, "mechanism": mech.name(), "deleted": true }),
                )?,
                Format::Table => writeln!(
                    out,
                    "Deleted the {} credential of user '{user}'.",
                    mech.name()
                )?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_parse_in_any_case() {
        assert_eq!(mechanism("scram-sha-512").unwrap(), ScramMechanism::Sha512);
        assert_eq!(mechanism("SCRAM-SHA-256").unwrap(), ScramMechanism::Sha256);
        assert!(mechanism("PLAIN").is_err());
        assert_eq!(mechanism_name(2), "SCRAM-SHA-512");
        assert_eq!(mechanism_name(9), "UNKNOWN");
    }
}
