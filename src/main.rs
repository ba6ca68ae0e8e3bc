//! The `waghl` command: `serve` (the default), `migrate`, `config check`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use waghl::config::Config;
use waghl::startup::{Application, open_store};

#[derive(Parser)]
#[command(version, about = "Bridges WhatsApp into GoHighLevel")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP and run every session and worker (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate every setting and print the effective configuration, secrets redacted.
    Check,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // A missing .env is normal; a malformed one is worth saying.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("waghl: cannot read .env: {e}");
        return ExitCode::from(2);
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("waghl: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    waghl::telemetry::init(config.log_format);
    let outcome = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => open_store(&config).await.map(|store| {
            println!("migrations applied ({})", store.dialect());
        }),
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            println!("{config:#?}");
            Ok(())
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waghl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    app.run_until_stopped(waghl::shutdown::signal()).await
}
