//! `kubectl nightshift dashboard` in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver), while a job runs on the real node; and what it refuses, over plain
//! HTTP: other hosts' names (DNS rebinding) and requests without the run's token.

use std::{path::PathBuf, process::Stdio};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use kube::api::PostParams;
use nightshift_api::BackgroundJob;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::{
    node::{OnTheNode, example_image, job, node},
    support::{TestNamespace, WAIT, client, free_port, install_crd, job_fixture, kubeconfig_path, wait_until},
};

/// Where the test leaves its screenshots.
fn output_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-output");
    std::fs::create_dir_all(&dir).expect("creating target/test-output");
    dir
}

/// chromedriver on a free port, and a WebDriver session of headless Chromium.
async fn browser() -> (tokio::process::Child, Client) {
    for tool in ["chromium", "chromedriver"] {
        let found = std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "{tool} is not installed: run tests/cluster/setup.sh (as root) to install chromium and chromium-driver"
        );
    }
    let port = free_port();
    let driver = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,720"]}),
    );
    let client = wait_until("chromedriver to start a browser session", WAIT, || {
        let capabilities = capabilities.clone();
        async move {
            let mut builder = ClientBuilder::new(HttpConnector::new());
            builder
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    (driver, client)
}

/// The dashboard process and the address it printed.
async fn dashboard(namespace: &str) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(crate::support::plugin_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(["-n", namespace, "dashboard", "--port", "0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl-nightshift starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line()).await.expect("the dashboard says where it is").unwrap();
    let line = line.expect("a line on stdout");
    let url = line.split_whitespace().find(|w| w.starts_with("http://127.0.0.1:")).expect("its address").to_string();
    (child, url)
}

/// A CSS attribute or text of the first element matching `css`, or an error to poll on.
async fn read(client: &Client, css: &str, attribute: Option<&str>) -> Result<String, String> {
    let element = client.find(Locator::Css(css)).await.map_err(|e| format!("{css}: {e}"))?;
    match attribute {
        Some(name) => element.attr(name).await.map_err(|e| e.to_string())?.ok_or(format!("{css} has no {name}")),
        None => element.text().await.map_err(|e| e.to_string()),
    }
}

#[tokio::test]
async fn the_dashboard_shows_a_running_job_advance_and_succeed_without_a_reload() {
    let (n, _operator) = node("dashboard").await;
    let ns = n.ns.name.clone();
    let spec = json!({
        "shards": 3,
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 20, "injectAgent": true},
        "template": {"spec": {"containers": [{
            "name": "worker", "image": example_image(), "command": ["/bulk-import.sh"],
            "env": [{"name": "BATCH_SIZE", "value": "100"}, {"name": "BATCH_SECONDS", "value": "0.5"}]
        }]}}
    });
    n.create_job(&job("import", "", spec)).await;
    let (_server, url) = dashboard(&ns).await;
    let (_driver, client) = browser().await;
    client.goto(&url).await.expect("the page loads");
    let loaded = client.execute("return window.__loaded", vec![]).await.expect("the page's script ran");
    assert!(loaded.is_number(), "{loaded:?}");
    // The page holds the token in its cookie now, not in the address bar (nor the history).
    let shown = client.current_url().await.unwrap();
    assert_eq!(shown.query(), None, "{shown}");

    let bar = format!("progress[data-key='{ns}/import']");
    let percent = |v: String| v.parse::<i64>().map_err(|e| e.to_string());
    let first = wait_until("the job's progress bar above 0", WAIT * 2, || async {
        let value = percent(read(&client, &bar, Some("value")).await?)?;
        if value > 0 && value < 100 { Ok(value) } else { Err(format!("at {value}")) }
    })
    .await;
    wait_until("the progress bar to advance, without a reload", WAIT * 2, || async {
        let value = percent(read(&client, &bar, Some("value")).await?)?;
        if value > first { Ok(()) } else { Err(format!("still at {value} (was {first})")) }
    })
    .await;
    let shot = output_dir().join("dashboard.png");
    std::fs::write(&shot, client.screenshot().await.expect("a screenshot")).unwrap();
    eprintln!("screenshot of the running job: {}", shot.display());

    let phase = format!("tr[data-key='{ns}/import'] .phase");
    wait_until("the page to show the job Succeeded", WAIT * 2, || async {
        let text = read(&client, &phase, None).await?;
        if text == "Succeeded" { Ok(()) } else { Err(text) }
    })
    .await;
    let again = client.execute("return window.__loaded", vec![]).await.unwrap();
    assert_eq!(again, loaded, "the page was never reloaded");

    // The job's page: one cell per shard, all succeeded.
    client.goto(&format!("{url}#/job/{ns}/import")).await.unwrap();
    let cells = wait_until("the shard grid", WAIT, || async {
        let cells = client.find_all(Locator::Css("#grid .cell")).await.map_err(|e| e.to_string())?;
        let mut classes = Vec::new();
        for cell in cells {
            classes.push(cell.attr("class").await.map_err(|e| e.to_string())?.unwrap_or_default());
        }
        if classes.len() == 3 { Ok(classes) } else { Err(format!("{classes:?}")) }
    })
    .await;
    assert!(cells.iter().all(|c| c == "cell succeeded"), "{cells:?}");
    let shot = output_dir().join("dashboard-job.png");
    std::fs::write(&shot, client.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshot of the job's page: {}", shot.display());
    client.close().await.unwrap();
}

/// One request, as raw as a hostile page could make it: `head` is the request line and headers.
/// The status code and the whole answer.
async fn http(port: u16, head: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connecting");
        stream.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(WAIT, exchange).await.expect("the dashboard answers");
    let code = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, answer)
}

#[tokio::test]
async fn the_dashboard_refuses_foreign_hosts_and_requests_without_its_token() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "dashboard-guard").await;
    let spec =
        json!({"shards": 1, "template": {"spec": {"containers": [{"name": "w", "image": "registry.example/w:1"}]}}});
    let job: BackgroundJob = job_fixture::job("import", spec).build();
    ns.api::<BackgroundJob>().create(&PostParams::default(), &job).await.expect("creating the job");
    let (_server, url) = dashboard(&ns.name).await;
    let rest = url.strip_prefix("http://127.0.0.1:").unwrap();
    let (port, token) = rest.split_once("/?token=").expect("the printed address carries the token");
    let port: u16 = port.parse().unwrap();
    assert!(token.len() >= 32, "an unguessable token: {token}");
    let host = format!("Host: 127.0.0.1:{port}\r\n");

    // The printed address passes and sets the cookie; the cookie alone then passes too, and the
    // job is in the data.
    let (code, answer) = http(port, &format!("GET /?token={token} HTTP/1.1\r\n{host}")).await;
    assert_eq!(code, 200, "{answer}");
    let cookie = format!("nightshift-dashboard-{port}={token}");
    assert!(answer.contains(&format!("set-cookie: {cookie}; Path=/; HttpOnly; SameSite=Strict")), "{answer}");
    let with_cookie = format!("GET /api/jobs HTTP/1.1\r\nHost: localhost:{port}\r\nCookie: {cookie}\r\n");
    wait_until("the job in /api/jobs, with the cookie", WAIT, || async {
        let (code, answer) = http(port, &with_cookie).await;
        if code == 200 && answer.contains(&format!("{}/import", ns.name)) { Ok(()) } else { Err(answer) }
    })
    .await;

    // A rebound name, or none, is refused, token or not.
    for head in [
        format!("GET /api/jobs?token={token} HTTP/1.1\r\nHost: evil.example:{port}\r\n"),
        format!("GET /api/jobs HTTP/1.1\r\nHost: evil.example:{port}\r\nCookie: {cookie}\r\n"),
        format!("GET /api/jobs?token={token} HTTP/1.0\r\n"),
    ] {
        let (code, answer) = http(port, &head).await;
        assert_eq!(code, 403, "{head}: {answer}");
        assert!(answer.contains("The dashboard answers only http://127.0.0.1:"), "{answer}");
        assert!(!answer.contains(&ns.name), "no data in a refusal: {answer}");
    }
    // The right host without the token (or with another) is refused, with where to go instead.
    for path in ["/", "/api/jobs", "/events", "/app.js", &format!("/api/jobs/{}/import", ns.name), "/?token=0000"] {
        let (code, answer) = http(port, &format!("GET {path} HTTP/1.1\r\n{host}")).await;
        assert_eq!(code, 403, "{path}: {answer}");
        assert!(answer.contains("Open the address `kubectl nightshift dashboard` printed"), "{answer}");
        assert!(!answer.contains(token), "a refusal never shows the token: {answer}");
    }
}
