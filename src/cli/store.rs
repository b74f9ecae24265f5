//! `safepoint-gateway store verify`: checks every record of a stopped gateway's store.

use crate::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// Commands on the store directory of a stopped gateway.
#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// Read every record as the gateway would and name each damaged one; exit 1 if any.
    /// Stop the gateway first (the store admits one process at a time).
    Verify {
        /// The store directory; default: store.path of the configuration.
        #[arg(long)]
        path: Option<PathBuf>,
        /// The configuration file whose store.path to verify (default: ./gateway.toml if
        /// present, else the built-in ./data).
        #[arg(long, short, conflicts_with = "path")]
        config: Option<PathBuf>,
    },
}

/// Runs `command`: prints each damaged record and a summary.
pub fn run(command: StoreCommand) -> ExitCode {
    let StoreCommand::Verify { path, config } = command;
    let path = match path {
        Some(p) => p,
        None => match Config::locate(config.as_deref()) {
            Ok(c) => c.store.path,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
    };
    match crate::store::verify::verify(&path) {
        Ok(report) => {
            for d in &report.damaged {
                println!("damaged: {}: {}", d.key, d.problem);
            }
            println!(
                "{}: {} records read, {} damaged",
                path.display(),
                report.records,
                report.damaged.len()
            );
            if report.damaged.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "restore the damaged records from a backup of {} (or remove them) before \
                     starting the gateway; requests that need them are refused with 500",
                    path.display()
                );
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("cannot verify {}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}

/// `migrate`: applies the embedded schema migrations to the configured PostgreSQL
/// database and says which.
pub fn migrate(config: Option<&std::path::Path>) -> ExitCode {
    let config = match Config::locate(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let Some(settings) = pg_settings(&config) else {
        eprintln!(
            "{}: store.engine is \"{}\"; migrate is for engine \"postgres\" (the embedded \
             engines need no migration)",
            config.origin,
            config.store.engine.name()
        );
        return ExitCode::from(1);
    };
    match crate::store::pg::migrate(&settings) {
        Ok(done) => {
            for m in &done.applied {
                println!("applied {m}");
            }
            println!(
                "schema at version {} ({} migration(s) applied now)",
                done.version,
                done.applied.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// The PostgreSQL settings of `config`, if its store is PostgreSQL.
fn pg_settings(config: &Config) -> Option<crate::store::pg::PgSettings> {
    let url = config.store_url.as_ref()?;
    Some(crate::store::pg::PgSettings {
        url: url.expose().to_string(),
        pool_size: config.store.pool_size,
        statement_timeout: std::time::Duration::from_millis(config.store.statement_timeout_ms),
        lease: std::time::Duration::from_secs(config.store.lease_secs),
    })
}
