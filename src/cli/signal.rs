//! Interrupts: Ctrl-C and SIGTERM stop a run gracefully, a second one at once.

use tokio_util::sync::CancellationToken;

/// The first interrupt (Ctrl-C or SIGTERM) cancels `shutdown`: no new scans,
/// in-flight writes finish, checkpoints are saved. The second exits at once
/// with `exit_code` (the checkpoints stay consistent).
pub(super) fn stop_on_signals(shutdown: CancellationToken, exit_code: u8) {
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!(
            "interrupt received: no new scans; finishing in-flight writes and saving checkpoints \
             (interrupt again to stop at once: checkpoints stay consistent)"
        );
        shutdown.cancel();
        wait_for_signal().await;
        eprintln!("second interrupt: stopping now; run the same command again to resume");
        std::process::exit(i32::from(exit_code));
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
