//! The `safepoint-gateway` command: `serve`, `simulator`, `mapping check|test`, and the
//! operator commands for dead letters and orphans. Exit codes: 0 ok, 1 a failure the user
//! can fix (the message says how), 2 a usage error. `main.rs` only parses and calls
//! [`run_cli`]; the work each command does lives in the module it belongs to.

mod probe;
mod store;

use crate::config::Config;
use crate::mapping::check;
use crate::simulator::{Simulator, SimulatorArgs};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "safepoint-gateway",
    version,
    about = "Gateway between legacy ITSM tools / internal gRPC services and Loomis SafePoint"
)]
pub struct Cli {
    /// Log format: text (default) or json.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Without --config: ./gateway.toml if present, else built-in
    /// defaults (loopback listeners, ./data, ./mappings, the built-in Loomis simulator).
    Serve {
        /// The configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run a stand-alone Loomis simulator.
    Simulator(Box<SimulatorArgs>),
    /// Validate and try mapping files.
    #[command(subcommand)]
    Mapping(MappingCommand),
    /// List or replay tool deliveries that gave up (asks a running gateway).
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// List Loomis messages that matched no incident (asks a running gateway).
    Orphans(AdminArgs),
    /// GET a health URL (default /readyz): exit 0 on 2xx, 1 otherwise (Docker HEALTHCHECK).
    Probe(probe::ProbeArgs),
    /// Check the store of a stopped gateway.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Bring the PostgreSQL schema (store.engine = "postgres") up to this release's; the
    /// gateway also does it at start. Refuses a schema newer than this release knows.
    Migrate {
        /// The configuration file naming the database (default: ./gateway.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MappingCommand {
    /// Validate mapping files (a directory means every *.toml in it; default: mappings/)
    /// and run their golden fixtures. Every error names file, line and column.
    Check { paths: Vec<PathBuf> },
    /// Run one mapping on one sample input and print the Loomis JSON it yields (or, with
    /// --update, the XML posted back for a JSON update), or every problem found.
    Test {
        #[arg(long)]
        mapping: PathBuf,
        /// A sample XML document (or a JSON object of fields for a gRPC field map).
        #[arg(long, required_unless_present = "update", conflicts_with = "update")]
        input: Option<PathBuf>,
        /// An update as a JSON file, in the form of the fixtures' `<case>.update.json`
        /// (snake_case fields of mappings/README.md section 8, times RFC 3339; not the
        /// gRPC stream's JSON), to render as outbound XML.
        #[arg(long)]
        update: Option<PathBuf>,
        /// CustomerNumber to show in the Dispatch: a placeholder unless given (the
        /// gateway sends the integration's `customer_number` from gateway.toml).
        #[arg(long, default_value = "A000000")]
        customer_number: String,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The gateway's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Environment variable holding the admin token (`[admin] token_env`).
    #[arg(long, default_value = "GATEWAY_ADMIN_TOKEN")]
    token_env: String,
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// List dead letters as JSON.
    List(AdminArgs),
    /// Move a dead letter back into the outbox.
    Replay {
        id: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Runs the command line `cli` and says how the process should exit.
pub fn run_cli(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { config } => {
            let config = match Config::locate(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            let json = cli.log_format.as_deref().or(config.log.format.as_deref()) == Some("json");
            let (traces, layer) = match config.traces.as_ref().map(crate::trace::export::init) {
                None => (None, None),
                Some(Ok((traces, layer))) => (Some(traces), Some(layer)),
                Some(Err(e)) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            let _log = crate::telemetry::init_with(json, config.log.level.as_deref(), layer);
            tracing::info!(config = %config.origin, "starting safepoint-gateway");
            if let Some(t) = &config.traces {
                tracing::info!(endpoint = %t.endpoint, service_name = %t.service_name, sample_ratio = t.sample_ratio, "traces on: spans go to the OTLP collector");
            }
            let code = run(async move { crate::app::serve(config).await });
            // After the runtime: the last spans of the stop itself are sent too.
            if let Some(traces) = traces {
                traces.shutdown();
            }
            code
        }
        Command::Simulator(args) => {
            let _log = crate::telemetry::init(cli.log_format.as_deref() == Some("json"), None);
            let listen = args.listen;
            let config = match (*args).into_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("simulator: {e}");
                    return ExitCode::from(1);
                }
            };
            run(async move {
                // SIGTERM as well as Ctrl-C: a container or service manager stops it with
                // SIGTERM. Handlers first, so a SIGTERM right after the line below counts.
                let signal = crate::app::shutdown_signal();
                let listener = tokio::net::TcpListener::bind(listen).await?;
                let sim = Simulator::start(config, listener).await?;
                tracing::info!(url = %sim.incidents_url(), "Loomis simulator listening");
                signal.await;
                tracing::info!("simulator stopping");
                sim.shutdown().await;
                Ok(())
            })
        }
        Command::Mapping(MappingCommand::Check { paths }) => {
            let paths = if paths.is_empty() {
                vec![PathBuf::from("mappings")]
            } else {
                paths
            };
            let report = check::check_paths(&paths);
            println!("{report}");
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Mapping(MappingCommand::Test {
            mapping,
            input,
            update,
            customer_number,
        }) => {
            let result = match (input, update) {
                (Some(input), _) => check::test_dispatch(&mapping, &input, &customer_number),
                (None, Some(update)) => check::test_update(&mapping, &update),
                (None, None) => unreachable!("clap requires --input or --update"),
            };
            match result {
                Ok(out) => {
                    println!("{out}");
                    ExitCode::SUCCESS
                }
                Err(problems) => {
                    eprintln!("{problems}");
                    ExitCode::from(1)
                }
            }
        }
        Command::DeadLetters(DeadLetterCommand::List(a)) => {
            admin(&a, http::Method::GET, "/v1/admin/dead-letters")
        }
        Command::DeadLetters(DeadLetterCommand::Replay { id, admin: a }) => admin(
            &a,
            http::Method::POST,
            &format!("/v1/admin/dead-letters/{id}/replay"),
        ),
        Command::Orphans(a) => admin(&a, http::Method::GET, "/v1/admin/orphans"),
        Command::Probe(a) => probe::run(&a),
        Command::Store(c) => store::run(c),
        Command::Migrate { config } => store::migrate(config.as_deref()),
    }
}

fn run(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn admin(a: &AdminArgs, method: http::Method, path: &str) -> ExitCode {
    use http::header::{HeaderValue, AUTHORIZATION};
    let Ok(token) = std::env::var(&a.token_env) else {
        eprintln!(
            "set {} to the gateway's admin token ([admin] token_env in gateway.toml)",
            a.token_env
        );
        return ExitCode::from(1);
    };
    let url = format!("{}{path}", a.url.trim_end_matches('/'));
    run(async move {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--url {:?}: {e}", a.url))?;
        let mut auth = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| anyhow::anyhow!("{} is not a valid header value", a.token_env))?;
        auth.set_sensitive(true);
        let client = crate::client::Client::new(Duration::from_secs(5), Duration::from_secs(5));
        let resp = client
            .request(
                method,
                &uri,
                &[(AUTHORIZATION, auth)],
                Vec::new(),
                Duration::from_secs(30),
                16 << 20,
            )
            .await
            .map_err(|e| {
                let hint = if e.is_connect() {
                    " (is the gateway running there? --url sets its HTTP address, server.http_listen)"
                } else {
                    ""
                };
                anyhow::anyhow!("{url}: {e}{hint}")
            })?;
        println!("{}", String::from_utf8_lossy(&resp.body));
        if (200..300).contains(&resp.status) {
            Ok(())
        } else {
            anyhow::bail!("{url}: HTTP {}", resp.status)
        }
    })
}
