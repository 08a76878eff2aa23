//! `nightshift agent -- CMD [ARGS...]`: runs a worker command that knows nothing of Kubernetes
//! and heartbeats for it. The command reports progress and results with `::nightshift::` lines
//! on its stdout ([`super::parse_line`]); the output is passed through unchanged, in bounded
//! memory however long its lines.
//!
//! When the worker is fenced (another attempt owns the shard, or the job is gone) the command
//! gets SIGTERM, then SIGKILL after the grace period. SIGTERM and SIGINT sent to the agent are
//! forwarded to it. The command runs in a process group of its own and signals go to the whole
//! group: `sh -c 'prepare; worker'` must not leave `worker` running on a shard that another
//! attempt now owns. The agent exits with the command's exit code (128+N when killed by signal
//! N), 127 when the command cannot be started, 2 when the agent cannot set itself up.

use std::{os::unix::process::ExitStatusExt, process::Stdio, time::Duration};

use kube::Client;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    process::{Child, Command},
    signal::unix::{SignalKind, signal},
    time::Instant,
};
use tracing::{debug, warn};

use super::{
    Directive, Heartbeat, PREFIX, WorkerEnv,
    lines::{Line, LineBuffer, MAX_LINE_BYTES},
    parse_line,
};

/// Exit code when the command cannot be started (as a shell does for "command not found").
pub const EXIT_CANNOT_START: u8 = 127;
/// Exit code when the agent itself cannot start: bad environment, no Kubernetes client.
pub const EXIT_SETUP: u8 = 2;

/// How long output still in the pipe is read after the command exited. Bounded because a
/// process the command left behind may hold the pipe open for ever.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How much of the command's output is read at a time.
const READ_BLOCK_BYTES: usize = 16 * 1024;

/// Runs `command` (program and arguments) under the heartbeat of the environment's Lease, if
/// any, and returns the exit code the agent should exit with.
pub async fn run(command: &[String], grace: Duration) -> u8 {
    let Some((program, args)) = command.split_first() else {
        eprintln!("nightshift agent: no command given");
        return EXIT_SETUP;
    };
    let heartbeat = match WorkerEnv::from_env() {
        Ok(None) => {
            debug!("{} is not set: running without heartbeats", nightshift_api::env::LEASE);
            None
        }
        Ok(Some(env)) => match Client::try_default().await {
            Ok(client) => Some(Heartbeat::start(client, &env)),
            Err(e) => {
                eprintln!("nightshift agent: connecting to Kubernetes to renew lease {}: {e}", env.lease);
                return EXIT_SETUP;
            }
        },
        Err(e) => {
            eprintln!("nightshift agent: {e}");
            return EXIT_SETUP;
        }
    };
    let code = supervise(program, args, grace, heartbeat.clone()).await;
    if let Some(heartbeat) = heartbeat {
        heartbeat.stop().await;
    }
    code
}

/// Runs the command to its end and returns the exit code; `heartbeat` is left running.
async fn supervise(program: &str, args: &[String], grace: Duration, heartbeat: Option<Heartbeat>) -> u8 {
    // Handlers first: from now on SIGTERM and SIGINT no longer end the agent, they reach the
    // command, and the agent exits when it does.
    let (mut sigterm, mut sigint) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("nightshift agent: installing signal handlers: {e}");
            return EXIT_SETUP;
        }
    };
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("nightshift agent: cannot start {program:?}: {e}");
            return EXIT_CANNOT_START;
        }
    };
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut pump = tokio::spawn(pump(stdout, tokio::io::stdout(), heartbeat.clone()));

    let mut fenced = false;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = sigterm.recv() => send_signal(&child, libc::SIGTERM),
            _ = sigint.recv() => send_signal(&child, libc::SIGINT),
            _ = when_fenced(heartbeat.as_ref()), if !fenced => {
                fenced = true;
                let lease = heartbeat.as_ref().map(Heartbeat::lease).unwrap_or_default();
                warn!(
                    lease,
                    grace_seconds = grace.as_secs(),
                    "lease {lease} is held by another attempt (or is gone); stopping {program:?}"
                );
                send_signal(&child, libc::SIGTERM);
                kill_at = Some(Instant::now() + grace);
            }
            _ = sleep_until(kill_at), if kill_at.is_some() => {
                warn!("{program:?} did not stop within {grace:?} of SIGTERM; killing it");
                kill_at = None;
                send_signal(&child, libc::SIGKILL);
            }
        }
    };
    // The last lines (and directives) may still be in the pipe: read them before the final
    // flush, so that the last progress and result land.
    match tokio::time::timeout(DRAIN_TIMEOUT, &mut pump).await {
        Ok(Ok(longest)) => debug!(longest_line_kept = longest, "the output of {program:?} ended"),
        Ok(Err(e)) => warn!(error = %e, "reading the output of {program:?} ended abnormally"),
        Err(_) => {
            warn!("the output of {program:?} is still open {DRAIN_TIMEOUT:?} after it exited; no longer reading it");
            pump.abort();
        }
    }
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => code as u8,
            (None, Some(signal)) => 128 + signal as u8,
            (None, None) => 1,
        },
        Err(e) => {
            warn!(error = %e, "waiting for {program:?}");
            1
        }
    }
}

/// Copies the command's output to `to` as it comes, bytes unchanged, and reports the directives
/// among its lines. Memory stays bounded whatever the command prints: a read block, and the
/// current line up to [`MAX_LINE_BYTES`] (see [`LineBuffer`]). Returns the most bytes of a line
/// it kept at once.
pub(super) async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    heartbeat: Option<Heartbeat>,
) -> usize {
    let mut block = vec![0; READ_BLOCK_BYTES];
    let mut lines = LineBuffer::new(MAX_LINE_BYTES);
    let mut passing_through = true;
    loop {
        let read = match from.read(&mut block).await {
            Ok(0) => break,
            Ok(read) => &block[..read],
            Err(e) => {
                warn!(error = %e, "reading the command's output");
                break;
            }
        };
        if passing_through {
            // Written and flushed as it comes, not held until a newline: the log shows a `\r`
            // progress bar as it moves, and a line as soon as it is printed.
            let written = async {
                to.write_all(read).await?;
                to.flush().await
            };
            if let Err(e) = written.await {
                // Keep reading, or the command would block on a full pipe.
                warn!(error = %e, "writing to stdout; the command's output is dropped from now on");
                passing_through = false;
            }
        }
        lines.push(read, |line| look(heartbeat.as_ref(), line));
    }
    lines.finish(|line| look(heartbeat.as_ref(), line));
    lines.high_water()
}

/// Reports the directive a line of output may be.
fn look(heartbeat: Option<&Heartbeat>, line: Line<'_>) {
    let Some(heartbeat) = heartbeat else { return };
    match line {
        Line::Whole(bytes) => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                report(heartbeat, text);
            }
        }
        Line::Overlong(start) if start.trim_ascii_start().starts_with(PREFIX.as_bytes()) => {
            warn!("a line of more than {MAX_LINE_BYTES} bytes starts like a nightshift directive; ignored as one");
        }
        Line::Overlong(_) => {}
    }
}

fn report(heartbeat: &Heartbeat, line: &str) {
    let directive = parse_line(line);
    if directive.is_none() && line.trim_start().starts_with(PREFIX) {
        // Passed through as ordinary output; say why nothing was reported.
        warn!(line = line.trim_end(), "not a valid nightshift directive; ignored");
    }
    match directive {
        Some(Directive::Progress { done, total, message }) => heartbeat.progress(done, total, &message),
        Some(Directive::Result(value)) => {
            if let Err(e) = heartbeat.result(value) {
                warn!(error = %e, "ignoring the command's result");
            }
        }
        Some(Directive::Checkpoint(text)) => {
            if heartbeat.is_fenced() {
                // Another attempt owns the shard (and has its checkpoint): this one is lost.
                warn!("this worker is fenced: its checkpoint cannot reach the shard's next attempt; dropped");
            } else if let Err(e) = heartbeat.checkpoint(&text) {
                warn!(error = %e, "ignoring the command's checkpoint");
            }
        }
        None => {}
    }
}

async fn when_fenced(heartbeat: Option<&Heartbeat>) {
    match heartbeat {
        Some(heartbeat) => heartbeat.fenced().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Signals the command's process group (its id is the command's pid).
fn send_signal(child: &Child, signal: libc::c_int) {
    // No id: the command was reaped already, nothing to signal. Until it is reaped its pid, and
    // so its group's id, cannot be reused, so this never reaches an unrelated process.
    let Some(pid) = child.id() else { return };
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(-pid, signal) } != 0 {
        warn!(pid, signal, error = %std::io::Error::last_os_error(), "signalling the command's process group");
    }
}
