//! `redraft view` at the edge: flags, the store, the printed URL.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context as _;

use super::eval::StoreArgs;
use super::{EXIT_INVALID, EXIT_OK};
use crate::view::ViewConfig;

#[derive(Debug, clap::Args)]
pub struct ViewArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The port to listen on (default: a free one, printed).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// The address to listen on (an IP address, or `localhost`). Anything
    /// but a loopback address requires the token printed at start on every
    /// request.
    #[arg(long, default_value = "127.0.0.1", value_parser = host)]
    pub host: IpAddr,
    /// Open the URL in the default browser (xdg-open or open).
    #[arg(long)]
    pub open: bool,
    /// How often the store is read for live updates.
    #[arg(long, default_value = "500ms", value_name = "DURATION")]
    pub poll: String,
}

/// An IP address, or `localhost` (127.0.0.1; no name is looked up).
fn host(s: &str) -> Result<IpAddr, String> {
    if s.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    s.parse()
        .map_err(|e| format!("{e} (an IP address such as 127.0.0.1 or 0.0.0.0, or localhost)"))
}

pub fn view_command(args: ViewArgs) -> u8 {
    let setup = || -> anyhow::Result<ViewConfig> {
        let poll = crate::units::parse_duration(&args.poll)
            .filter(|d| !d.is_zero())
            .with_context(|| {
                format!(
                    "--poll {}: expected a positive duration (500ms, 2s)",
                    args.poll
                )
            })?;
        Ok(ViewConfig::on(args.host, args.port, poll)?)
    };
    let config = match setup() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_INVALID;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return EXIT_INVALID;
        }
    };
    let location = args.store.store.clone();
    let result = runtime.block_on(async move {
        // Listen before the URL is out: a signal sent once it is seen is
        // never lost to the default action.
        let stop = super::interrupt_signal();
        let viewer = super::eval::viewer_over(&location, &args.store.timeouts, config).await?;
        let url = viewer.url();
        println!("redraft view: {url}");
        eprintln!(
            "serving {}; Ctrl-C stops",
            crate::redact::without_password(&location)
        );
        if args.open {
            open_browser(&url);
        }
        // Stopped as every command is: the line the signal began is ended,
        // and the exit code says which signal (130 for Ctrl-C, 143 for
        // SIGTERM, 129 for SIGHUP); EXIT_OK where signals are unavailable
        // and the server stops by itself.
        let signalled = stop.await;
        if signalled {
            eprintln!("stopping the viewer; the store was only read");
        }
        drop(viewer);
        anyhow::Ok(signalled)
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(true) => super::interrupted_exit(),
        Ok(false) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_INVALID
        }
    }
}

/// Best effort: the platform's opener, its failure only reported.
pub(crate) fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    if let Err(e) = std::process::Command::new(opener)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        eprintln!("warning: cannot open a browser ({opener}: {e}); open {url}");
    }
}
