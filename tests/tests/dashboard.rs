//! The dashboard in a real browser: headless Chromium driven through chromedriver (each test
//! starts its own on a free port and kills it by its pid). Covers login, claiming with the QR
//! code, "+ Add" with its live progress, the pool's size, kill, logout across replicas, escaping,
//! the phone view and the public page, console errors, and layout at 375 and 1280 px.
//! Screenshots of every page at both widths go to `target/artifacts/browser/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use agentpool_core::domain::InstanceStatus::{self, *};
use agentpool_tests::{free_port, wait_until, TestPool};
use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{json, Value};

const INSTALL: &str = "the browser tests need Chromium and its WebDriver: \
     `apt-get install -y chromium chromium-driver` (CI's .ci/run installs them)";

/// How long a page may take to show what a step expects.
const PATIENCE: Duration = Duration::from_secs(30);

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// chromedriver, in a process group of its own so that the browsers it starts go with it.
struct Driver {
    child: std::process::Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
    }
}

/// chromedriver's log of the browser console (`goog:loggingPrefs`): the entries since the last
/// read.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

struct Browser {
    client: Client,
    _driver: Driver,
}

impl Browser {
    async fn start() -> Self {
        let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"])
            .unwrap_or_else(|| panic!("no chromium on PATH: {INSTALL}"));
        let chromedriver = on_path(&["chromedriver"])
            .unwrap_or_else(|| panic!("no chromedriver on PATH: {INSTALL}"));
        let port = free_port();
        let mut command = Command::new(chromedriver);
        command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = Driver {
            child: command.spawn().expect("start chromedriver"),
        };
        wait_until(PATIENCE, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a browser session");
        Self {
            client,
            _driver: driver,
        }
    }

    async fn close(self) {
        let Browser { client, _driver } = self;
        let _ = client.close().await;
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} not found: {e}"))
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    /// Clicks what `css` finds, again if the page redrew it in between.
    async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.click().await.is_ok(),
                Err(_) => false,
            };
            if clicked {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "could not click {css}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// The text of the first element `css` finds ("" when none).
    async fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : '';",
            json!(css)
        );
        self.js(&script)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until `css`'s text satisfies `ok`; returns it.
    async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let text = self.text(css).await;
            if ok(&text) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} never showed what was expected; last: {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn count(&self, status: InstanceStatus) -> i64 {
        self.text(&format!(".count-{status} .n"))
            .await
            .parse()
            .unwrap_or(-1)
    }

    /// SEVERE entries of the console since the last read.
    async fn console_errors(&self) -> Vec<String> {
        let entries = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("browser log");
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].to_string())
            .collect()
    }

    async fn assert_no_console_errors(&self) {
        let errors = self.console_errors().await;
        assert!(errors.is_empty(), "console errors: {errors:#?}");
    }

    async fn alert_open(&self) -> bool {
        self.client.get_alert_text().await.is_ok()
    }

    async fn log_in(&self, key: &str) {
        self.fill("#key", key).await;
        self.click("#login").await;
    }

    /// At each width: the page fits without sideways scrolling, and a screenshot is kept.
    async fn check_layout(&self, page: &str) {
        for width in [375u32, 1280] {
            self.client
                .set_window_size(width, 900)
                .await
                .expect("resize");
            let fits = self
                .js("return [document.documentElement.scrollWidth, window.innerWidth];")
                .await;
            let (scroll, inner) = (fits[0].as_i64().unwrap(), fits[1].as_i64().unwrap());
            assert!(
                scroll <= inner,
                "{page} at {width} px scrolls sideways: {scroll} > {inner}"
            );
            // The whole page in one screenshot: a window as tall as the page, from its top.
            let height = self
                .js("window.scrollTo(0, 0); return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight;")
                .await
                .as_u64()
                .unwrap_or(900)
                .clamp(900, 4000) as u32;
            self.client
                .set_window_size(width, height)
                .await
                .expect("resize");
            let png = self.client.screenshot().await.expect("screenshot");
            let dir = artifacts();
            std::fs::write(dir.join(format!("{page}-{width}.png")), png).expect("save screenshot");
        }
        self.client
            .set_window_size(1280, 900)
            .await
            .expect("resize");
    }

    /// What the QR code in `css` says, read from a screenshot of it.
    async fn qr_text(&self, css: &str) -> String {
        let probe = format!(
            "const i = document.querySelector({}); return !!i && i.complete && i.naturalWidth > 0;",
            json!(css)
        );
        wait_until(PATIENCE, || async { self.js(&probe).await == json!(true) }).await;
        // A screenshot of an element shows only what is in the viewport.
        self.js(&format!(
            "document.querySelector({}).scrollIntoView({{block: 'center'}}); return true;",
            json!(css)
        ))
        .await;
        let png = self.find(css).await.screenshot().await.expect("screenshot");
        let image = image::load_from_memory(&png).expect("a PNG").to_luma8();
        let (w, h) = (image.width() as usize, image.height() as usize);
        let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
            image.get_pixel(x as u32, y as u32)[0]
        });
        let grids = prepared.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code in {css}");
        let (_, content) = grids[0].decode().expect("the QR code decodes");
        content
    }
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts/browser");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

async fn instance_status(t: &TestPool, id: &str) -> Option<InstanceStatus> {
    t.instance(id).await.map(|i| i.status)
}

const SCRIPT_NAME: &str = "<script>alert(1)</script>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_logs_in_claims_adds_and_kills() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "1")], &[]).await;
    t.fill(1).await;
    let b = Browser::start().await;

    b.goto(&t.url("/admin")).await;
    b.check_layout("login").await;
    b.log_in("wrong-key-0123456789").await;
    let refused = b.wait_text("#login-error", |t| !t.is_empty()).await;
    assert!(refused.contains("Wrong key"), "{refused}");
    // The refusal is a 401 page, which the console reports; nothing else may.
    let refusal = |e: &String| e.contains("/admin/login") && e.contains("status of 401");
    b.log_in(&t.key).await;
    b.find("#claim-form").await;
    assert_eq!(b.text("#env-badge").await, "dev");

    // Claim through the form; the invite URL and a QR code of it come back.
    b.fill("#claim-name", SCRIPT_NAME).await;
    b.fill("#claim-instructions", "Plan a trip to Tokyo.").await;
    b.click("#claim-submit").await;
    let invite = b.wait_text("#invite-url", |t| !t.is_empty()).await;
    let claimed = t.ids(Claimed).await;
    assert_eq!(claimed.len(), 1);
    let row = t.instance(&claimed[0]).await.unwrap();
    assert_eq!(row.invite_url.as_deref(), Some(invite.as_str()));
    assert_eq!(row.agent_name.as_deref(), Some(SCRIPT_NAME));
    assert_eq!(b.qr_text("#invite-qr").await, invite);
    // The agent's name is text in the table, not a script.
    wait_until(PATIENCE, || async {
        let names = b
            .js("return [...document.querySelectorAll('#instance-rows .agent-name')].map(e => e.textContent);")
            .await;
        names.as_array().unwrap().contains(&json!(SCRIPT_NAME))
    })
    .await;
    assert!(!b.alert_open().await, "the agent's name ran as a script");

    // "+ Add 2": a line per instance, each step reported, until complete; the counts follow.
    let live_before = t.count(Idle).await + t.count(Starting).await;
    b.fill("#add-count", "2").await;
    b.click("#add-submit").await;
    let done = b
        .wait_text("#add-message", |t| t.starts_with("Complete"))
        .await;
    assert_eq!(done, "Complete: 2 created, 0 failed.");
    let lines = b
        .js("return [...document.querySelectorAll('#add-progress li')].map(li => [...li.querySelectorAll('.step')].map(s => s.textContent));")
        .await;
    let lines = lines.as_array().unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for steps in lines {
        let steps: Vec<&str> = steps
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(steps.contains(&"local: ok"), "{steps:?}");
        assert!(steps.contains(&"done: ok"), "{steps:?}");
    }
    assert_eq!(
        t.count(Idle).await + t.count(Starting).await,
        live_before + 2
    );
    wait_until(PATIENCE, || async {
        b.count(Idle).await + b.count(Starting).await == live_before + 2
    })
    .await;

    // Kill one of them from its row.
    let victim = t.ids(Starting).await.remove(0);
    b.click(&format!(
        "#instance-rows tr[data-id=\"{victim}\"] button.kill"
    ))
    .await;
    wait_until(PATIENCE, || async {
        !matches!(instance_status(&t, &victim).await, Some(Starting))
    })
    .await;
    let state = b
        .wait_text(
            &format!("#instance-rows tr[data-id=\"{victim}\"] .status"),
            |s| s == "destroying" || s.is_empty(),
        )
        .await;
    assert!(state == "destroying" || state.is_empty());

    b.check_layout("dashboard").await;
    let errors: Vec<String> = b
        .console_errors()
        .await
        .into_iter()
        .filter(|e| !refusal(e))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_min_idle_grows_the_pool() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "0")], &[]).await;
    let b = Browser::start().await;
    b.goto(&t.url("/admin")).await;
    b.log_in(&t.key).await;
    b.find("#size-form").await;
    assert_eq!(b.count(Idle).await, 0);

    b.fill("#min-idle", "3").await;
    b.click("#size-save").await;
    let saved = b.wait_text("#size-message", |t| !t.is_empty()).await;
    assert_eq!(saved, "Saved: min idle 3, max total 10.");
    // The tick (here, run by the test; in `serve`, kicked by the change) fills to the new size.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while t.count(Idle).await < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pool never grew to 3"
        );
        t.tick().await;
    }
    wait_until(PATIENCE, || async { b.count(Idle).await == 3 }).await;
    b.wait_text("#size-source", |s| s == "Set by operator (dashboard).")
        .await;
    b.assert_no_console_errors().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_ends_the_session_on_another_replica() {
    let t = TestPool::start().await;
    let other = t.replica().await;
    let b = Browser::start().await;
    b.goto(&t.url("/admin")).await;
    b.log_in(&t.key).await;
    b.find("#logout").await;
    let cookie = b
        .client
        .get_named_cookie("agentpool_session")
        .await
        .expect("the session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let cookie = format!("agentpool_session={}", cookie.value());
    let on_other = || async {
        reqwest::Client::new()
            .get(format!("{other}/api/pool/status"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(on_other().await, StatusCode::OK);

    b.click("#logout").await;
    b.find("#key").await;
    assert_eq!(on_other().await, StatusCode::UNAUTHORIZED);
    b.goto(&format!("{other}/admin")).await;
    b.find("#key").await;
    b.assert_no_console_errors().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_view_claims_into_a_conversation() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "1")], &[]).await;
    t.fill(1).await;
    let b = Browser::start().await;
    b.client.set_window_size(375, 900).await.expect("resize");
    b.goto(&t.url("/admin/lite")).await;
    b.log_in(&t.key).await;
    b.find("#claim-join").await;
    assert_eq!(b.js("return location.pathname;").await, "/admin/lite");
    wait_until(PATIENCE, || async { b.count(Idle).await == 1 }).await;

    let join = "https://convos.example/v2?i=conversation42";
    b.fill("#claim-join", join).await;
    b.click("#claim-submit").await;
    let invite = b.wait_text("#invite-url", |t| !t.is_empty()).await;
    assert_eq!(invite, join);
    assert!(b.text("#claim-message").await.starts_with("Joined"));
    assert_eq!(b.qr_text("#invite-qr").await, join);
    let claimed = t.ids(Claimed).await;
    assert_eq!(
        t.instance(&claimed[0]).await.unwrap().join_url.as_deref(),
        Some(join)
    );
    wait_until(PATIENCE, || async { b.count(Claimed).await == 1 }).await;
    b.check_layout("lite").await;
    b.assert_no_console_errors().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_page_shows_names_as_text() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "1")], &[]).await;
    t.fill(1).await;
    let (status, claim) = t.claim(SCRIPT_NAME).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    let b = Browser::start().await;
    b.goto(&t.url("/")).await;
    assert_eq!(b.text("#agents .agent-name").await, SCRIPT_NAME);
    assert_eq!(b.text("#agents .status").await, "claimed");
    assert!(!b.alert_open().await, "the agent's name ran as a script");
    let html = b.client.source().await.expect("source");
    assert!(!html.contains(claim["gatewayToken"].as_str().unwrap()));
    assert!(!html.contains(&t.key));
    b.check_layout("public").await;
    b.assert_no_console_errors().await;
    b.close().await;
}

/// `/docs` renders `/openapi.json` under the page CSP (`script-src 'self'`), with nothing from
/// the internet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_renders_the_api_document() {
    let t = TestPool::start().await;
    let b = Browser::start().await;
    b.goto(&t.url("/docs")).await;
    let operations = b
        .wait_text("#operations", |text| text.contains("POST /api/pool/claim"))
        .await;
    for line in [
        "GET /api/pool/replenish/stream",
        "Access: bearer or queryKey or session",
        "DELETE /api/pool/instances/{id}",
        "ErrorBody",
    ] {
        assert!(
            operations.contains(line),
            "{line} missing from {operations}"
        );
    }
    b.check_layout("docs").await;
    b.assert_no_console_errors().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_asks_before_destroying() {
    let t = TestPool::with(
        &[("POOL_MIN_IDLE", "1"), ("POOL_ENVIRONMENT", "production")],
        &[],
    )
    .await;
    t.fill(1).await;
    let id = t.ids(Idle).await.remove(0);
    let b = Browser::start().await;
    b.goto(&t.url("/admin")).await;
    assert_eq!(b.text("#env-badge").await, "production");
    b.log_in(&t.key).await;
    let kill = format!("#instance-rows tr[data-id=\"{id}\"] button.kill");
    b.find(&kill).await;

    b.click(&kill).await;
    let question = b.client.get_alert_text().await.expect("a confirmation");
    assert!(question.contains("PRODUCTION"), "{question}");
    b.client.dismiss_alert().await.expect("dismiss");
    // Declined: the kill was never sent.
    assert_eq!(instance_status(&t, &id).await, Some(Idle));

    b.click(&kill).await;
    b.client.get_alert_text().await.expect("a confirmation");
    b.client.accept_alert().await.expect("accept");
    wait_until(PATIENCE, || async {
        instance_status(&t, &id).await != Some(Idle)
    })
    .await;
    b.assert_no_console_errors().await;
    b.close().await;
}

/// The Recycle action beside Kill, on a claimed agent: with a provider that recycles, the agent
/// goes back to the pool (the same instance idle again), not away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycle_beside_kill_returns_a_claimed_agent_to_the_pool() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "1"), ("LOCAL_RECYCLE", "true")], &[]).await;
    t.fill(1).await;
    let (_, claimed) = t.claim("recycled-agent").await;
    let id = claimed["instanceId"].as_str().unwrap().to_string();
    let b = Browser::start().await;
    b.goto(&t.url("/admin")).await;
    b.log_in(&t.key).await;
    let recycle = format!("#instance-rows tr[data-id=\"{id}\"] button.recycle");
    b.find(&recycle).await;
    b.find(&format!("#instance-rows tr[data-id=\"{id}\"] button.kill"))
        .await;
    b.click(&recycle).await;
    b.wait_text("#notice", |t| t.contains("is being recycled"))
        .await;
    wait_until(PATIENCE, || async {
        instance_status(&t, &id).await == Some(Idle)
    })
    .await;
    b.assert_no_console_errors().await;
    b.close().await;
}
