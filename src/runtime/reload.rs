//! The reload handle: how the console and the admin endpoint ask the running server to reload
//! without depending on the code that starts it.

/// Asks the running server to reload, as SIGHUP does, and waits for the outcome (the
/// console's "apply"). The signal loop serves both, so two reloads never run at once.
#[derive(Clone)]
pub struct ReloadHandle(tokio::sync::mpsc::Sender<ReloadRequest>);

/// A reload request: where to send the outcome (the refusal as one line).
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<(), String>>;

impl ReloadHandle {
    pub fn channel() -> (ReloadHandle, tokio::sync::mpsc::Receiver<ReloadRequest>) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (ReloadHandle(tx), rx)
    }

    pub async fn reload(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.0
            .send(tx)
            .await
            .map_err(|_| "the server is stopping".to_string())?;
        rx.await.map_err(|_| "the server is stopping".to_string())?
    }
}
