//! The user's cluster, as kubectl finds it: `--kubeconfig` (else `$KUBECONFIG`, else
//! `~/.kube/config`), `--context`, and the namespace from `-n` or the context.

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use super::{Error, Global};

/// A client and where to look.
#[derive(Clone)]
pub struct Target {
    pub client: Client,
    /// `-n`, else the context's namespace, else "default".
    pub namespace: String,
    /// `-A`: every namespace.
    pub all_namespaces: bool,
    /// The API server's address, for messages.
    pub server: String,
}

pub async fn connect(global: &Global) -> Result<Target, Error> {
    let options = KubeConfigOptions { context: global.context.clone(), ..Default::default() };
    let config = match &global.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig(e.to_string()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None => Config::from_kubeconfig(&options).await,
    }
    .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let namespace = global.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    Ok(Target { client, namespace, all_namespaces: global.all_namespaces, server })
}
