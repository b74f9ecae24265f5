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
    /// Copy everything from the store one configuration names into the (empty) store
    /// another names: an embedded store into PostgreSQL to grow into a cluster, or back.
    /// Incidents with their timelines, update sequences (streams resume where they
    /// were), the outbox with its schedules, dead letters, orphans, what callers sent and
    /// the audit log. Stop every
    /// gateway on both first. Exit 1 if the target is not empty or the counts differ.
    Copy {
        /// The configuration whose [store] is copied from.
        #[arg(long)]
        from: PathBuf,
        /// The configuration whose [store] is copied into.
        #[arg(long)]
        to: PathBuf,
    },
}

/// Runs `command`: prints each damaged record and a summary.
pub fn run(command: StoreCommand) -> ExitCode {
    let (path, config) = match command {
        StoreCommand::Verify { path, config } => (path, config),
        StoreCommand::Copy { from, to } => return copy(&from, &to),
    };
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

/// `store copy --from A --to B`.
fn copy(from: &std::path::Path, to: &std::path::Path) -> ExitCode {
    let open = |p: &std::path::Path| -> Result<crate::store::Store, String> {
        let env = |k: &str| std::env::var(k).ok();
        let c = Config::from_file(p, &env).map_err(|e| e.to_string())?;
        crate::store::Store::open_config(&c.store, c.store_url.as_ref())
            .map_err(|e| format!("{}: cannot open its store: {e}", p.display()))
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        let (source, target) = match (open(from), open(to)) {
            (Ok(s), Ok(t)) => (s, t),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        let result = crate::store::copy::copy(&source, &target).await;
        let closed = target.close().await;
        let _ = source.close().await;
        match (result, closed) {
            (Ok(c), Ok(())) => {
                println!(
                    "copied {} incidents, {} updates ({} integrations), {} outbox jobs, {} dead letters, {} orphans, {} raw inputs, {} audit entries; counts checked",
                    c.incidents,
                    c.updates,
                    c.sequences.len(),
                    c.jobs,
                    c.dead_letters,
                    c.orphans,
                    c.raw_inputs,
                    c.audit_entries
                );
                for (integration, last) in &c.sequences {
                    println!("  {integration}: updates up to sequence {last}");
                }
                ExitCode::SUCCESS
            }
            (Err(e), _) => {
                eprintln!("store copy failed: {e}");
                ExitCode::from(1)
            }
            (Ok(_), Err(e)) => {
                eprintln!("store copy: the target's last write failed: {e}");
                ExitCode::from(1)
            }
        }
    })
}
