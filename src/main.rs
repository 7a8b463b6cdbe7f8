//! pgha: highly available PostgreSQL on bare hosts over SSH.

use clap::Parser;

use clap::CommandFactory;

use pgha::cli::{Cli, Command};
use pgha::commands::{
    backup, deploy, destroy, images, inventory, lock, pool, rebuild, remove, restart, restore,
    status, switchover, upgrade,
};
use pgha::error::{Exit, Failure};
use pgha::lab;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap exits 2 on bad options; our documented code is 5.
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => Exit::BadOptions as i32,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_tracing(cli.verbose);
    pgha::probe::tls::init_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(run(cli));
    match result {
        Ok(exit) => std::process::exit(exit as i32),
        Err(f) => {
            eprintln!("error: {f}");
            std::process::exit(f.exit as i32);
        }
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "pgha=info",
        _ => "pgha=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGHA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

async fn run(cli: Cli) -> Result<Exit, Failure> {
    let output = cli.output;
    // Status redraws until Ctrl-C itself, upgrade cleans up on Ctrl-C itself; the
    // others hold no lock to give back.
    let holds_lock = matches!(
        cli.command,
        Command::Deploy(_)
            | Command::Switchover(_)
            | Command::Restart(_)
            | Command::Rebuild(_)
            | Command::Lab(_)
            | Command::Backup(_)
            | Command::Restore(_)
            | Command::Destroy(_)
            | Command::Remove(_)
    );
    let command = async move {
        match cli.command {
            Command::Inventory(args) => inventory::command(&args, output),
            Command::Deploy(args) => deploy::command(args, output).await,
            Command::Status(args) => status::command(args, output).await,
            Command::Switchover(args) => switchover::command(args, output).await,
            Command::Restart(args) => restart::command(args, output).await,
            Command::Upgrade(args) => upgrade::command(args, output).await,
            Command::Rebuild(args) => rebuild::command(args, output).await,
            Command::Lock(args) => lock::command(args, output).await,
            Command::Pool(args) => pool::command(args, output).await,
            Command::Backup(args) => backup::command(args, output).await,
            Command::Restore(args) => restore::command(args, output).await,
            Command::Destroy(args) => destroy::command(args, output).await,
            Command::Remove(args) => remove::command(args, output).await,
            Command::Lab(args) => lab::command(args, output).await,
            Command::Images(_) => images::command().await,
            Command::Completions(args) => {
                clap_complete::generate(
                    args.shell,
                    &mut Cli::command(),
                    "pgha",
                    &mut std::io::stdout(),
                );
                Ok(Exit::Ok)
            }
        }
    };
    if !holds_lock {
        return command.await;
    }
    tokio::select! {
        r = command => r,
        _ = tokio::signal::ctrl_c() => {
            // Give the cluster lock back at once instead of letting it expire.
            pgha::ops::lock::release_all().await;
            Err(Failure::error("interrupted; the cluster lock (if held) was released"))
        }
    }
}
