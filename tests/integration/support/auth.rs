//! Acting as a ServiceAccount: its token from the TokenRequest API, and a client or a kubeconfig
//! that authenticate with that token alone. And the namespace's default ServiceAccount, without
//! which no pod is admitted.

use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
use kube::{Api, Client, api::PostParams};
use serde_json::json;

use super::{TempFile, TestNamespace, WAIT, admin_config, kubeconfig_path, wait_until};

/// A client that authenticates with a bearer token only (e.g. one from [`token`]).
pub async fn client_with_token(token: &str) -> Client {
    let mut config = admin_config().await;
    config.auth_info = serde_json::from_value(json!({ "token": token })).unwrap();
    Client::try_from(config).expect("a token client")
}

/// A token for the ServiceAccount `namespace/account`, from the TokenRequest API, once the
/// account exists (the operator or a controller may still be making it).
pub async fn token(client: &Client, namespace: &str, account: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    wait_until(&format!("ServiceAccount {namespace}/{account}"), WAIT, || async {
        sas.get_opt(account).await.map_err(|e| e.to_string())?.map(|_| ()).ok_or_else(|| "absent".into())
    })
    .await;
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).unwrap();
    let response = sas
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token for {namespace}/{account}: {e}"));
    response.status.and_then(|s| s.token).expect("a TokenRequest answers with a token")
}

/// The harness kubeconfig with its user replaced by a bearer token, as the temporary file `name`.
pub fn token_kubeconfig(token: &str, name: &str) -> TempFile {
    let path = kubeconfig_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut config: serde_json::Value = serde_yaml_ng::from_str(&text).expect("the kubeconfig is YAML");
    config["users"] = json!([{"name": "token", "user": {"token": token}}]);
    for context in config["contexts"].as_array_mut().expect("kubeconfig contexts") {
        context["context"]["user"] = json!("token");
    }
    TempFile::new(name, &config.to_string()) // JSON is YAML
}

/// Waits for the namespace's default ServiceAccount: pods are refused until the
/// service-account controller has made it.
pub async fn wait_default_service_account(ns: &TestNamespace) {
    let sas: Api<ServiceAccount> = ns.api();
    wait_until("the namespace's default ServiceAccount", WAIT, || async {
        sas.get_opt("default").await.map_err(|e| e.to_string())?.map(|_| ()).ok_or_else(|| "absent".into())
    })
    .await;
}
