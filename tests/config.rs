//! Configuration: the example files parse, and mistakes name the file, line and key.

use std::path::Path;

use ncx::config::{ClientFile, ClientSettings, ConfigError, ServerCert, ServerSettings, Source};
use ncx::tls::ServerTrust;

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[test]
fn example_server_config_parses() {
    let s = ServerSettings::from_source(&Source::file(&examples().join("server.toml")).unwrap())
        .unwrap();
    assert_eq!(s.listen.port(), 7835);
    assert_eq!(s.identities.len(), 2);
    assert!(s.identities[0].allows(13389));
    assert!(s.identities[0].allows(20050));
    assert!(!s.identities[0].allows(20100));
    assert!(matches!(s.cert, ServerCert::Auto(_)));
    // Secrets are masked in Debug output.
    assert!(!format!("{s:?}").contains("change-me"), "{s:?}");
}

#[test]
fn example_client_config_parses() {
    let c = ClientSettings::from_source(
        &Source::file(&examples().join("client.toml")).unwrap(),
        ClientFile::default(),
        None,
    )
    .unwrap();
    assert_eq!(c.identity.as_str(), "office");
    assert_eq!(c.services.len(), 4);
    assert_eq!(c.services[0].remote_port, 13389);
    assert!(c.services[3].udp && !c.services[0].udp);
    assert!(matches!(c.trust, ServerTrust::Pinned(_)));
    assert!(!format!("{c:?}").contains("change-me"), "{c:?}");
}

fn server_err(text: &str) -> String {
    ServerSettings::from_source(&Source::text("server.toml", text))
        .expect_err("the config is invalid")
        .to_string()
}

fn client_err(text: &str) -> String {
    ClientSettings::from_source(
        &Source::text("client.toml", text),
        ClientFile::default(),
        None,
    )
    .expect_err("the config is invalid")
    .to_string()
}

const ID: &str = "[[identities]]\nname = \"a\"\ntoken = \"t\"\nports = [\"2000-3000\"]\n";

#[test]
fn unknown_key_names_file_line_and_key() {
    let e = server_err(&format!("listen = \"127.0.0.1:1\"\nlisen = 3\n{ID}"));
    assert!(e.starts_with("server.toml:2:"), "{e}");
    assert!(e.contains("lisen"), "{e}");
}

#[test]
fn bad_port_range_names_line_and_key() {
    let e = server_err("[[identities]]\nname = \"a\"\ntoken = \"t\"\nports = [\"3000-2000\"]\n");
    assert!(e.starts_with("server.toml:4:"), "{e}");
    assert!(e.contains("ports"), "{e}");
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn bad_types_and_values_are_located() {
    let e = server_err(&format!("handshake_timeout_secs = \"ten\"\n{ID}"));
    assert!(e.starts_with("server.toml:1:"), "{e}");
    assert!(e.contains("handshake_timeout_secs"), "{e}");
    let e = server_err(&format!("listen = \"nowhere\"\n{ID}"));
    assert!(
        e.starts_with("server.toml:1:") && e.contains("listen"),
        "{e}"
    );
    let e = server_err(&format!(
        "{ID}[[identities]]\nname = \"a\"\ntoken = \"u\"\nports = [\"1\"]\n"
    ));
    assert!(
        e.starts_with("server.toml:6:") && e.contains("defined twice"),
        "{e}"
    );
    let e = server_err("[[identities]]\nname = \"bad name\"\ntoken = \"t\"\nports = [\"1\"]\n");
    assert!(e.starts_with("server.toml:2:") && e.contains("name"), "{e}");
    let e = server_err(
        "[tls]\ncert = \"x.pem\"\n[[identities]]\nname = \"a\"\ntoken = \"t\"\nports = [\"1\"]\n",
    );
    assert!(
        e.starts_with("server.toml:2:") && e.contains("tls.key"),
        "{e}"
    );
    let e = server_err("listen = \"127.0.0.1:1\"\n");
    assert!(e.contains("no identities"), "{e}");
}

#[test]
fn client_mistakes_are_located() {
    let base = "server = \"h:1\"\nidentity = \"a\"\ntoken = \"t\"\nserver_fingerprint = \"sha256:00\"\n[[services]]\nname = \"s\"\nlocal = \"127.0.0.1:1\"\n";
    let e = client_err(base);
    assert!(
        e.starts_with("client.toml:4:") && e.contains("server_fingerprint"),
        "{e}"
    );
    let fp = format!("sha256:{}", "ab".repeat(32));
    let ok = base.replace("sha256:00", &fp);
    let e = client_err(&ok.replace("local = \"127.0.0.1:1\"", "local = \"nowhere\""));
    assert!(
        e.starts_with("client.toml:7:") && e.contains("local"),
        "{e}"
    );
    let e = client_err(&format!("{ok}\nca = \"x\"\n").replacen(
        "[[services]]",
        "ca = \"/nonexistent/ca.pem\"\n[[services]]",
        1,
    ));
    assert!(e.contains("choose one way") || e.contains("ca"), "{e}");
    let e = client_err(&ok.replace("server_fingerprint", "#"));
    assert!(e.contains("cannot be verified"), "{e}");
    let e = client_err(&ok.replace("token = \"t\"\n", ""));
    assert!(e.contains("no token"), "{e}");
    // The token may come from the environment instead.
    let c = ClientSettings::from_source(
        &Source::text("client.toml", &ok.replace("token = \"t\"\n", "")),
        ClientFile::default(),
        Some("from-env".into()),
    )
    .unwrap();
    assert!(!format!("{:?}", c.token).contains("from-env"));
}

#[test]
fn missing_file_is_named() {
    let e = Source::file(Path::new("/nonexistent/ncx.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/ncx.toml"), "{e}");
}

#[test]
fn service_flag_syntax() {
    let s: ncx::config::ServiceSpec = "rdp=127.0.0.1:3389@13389".parse().unwrap();
    assert_eq!(s.name.as_str(), "rdp");
    assert_eq!(s.local, "127.0.0.1:3389");
    assert_eq!(s.remote_port, 13389);
    let s: ncx::config::ServiceSpec = "v6=[::1]:22@0".parse().unwrap();
    assert_eq!(s.local, "[::1]:22");
    assert!("rdp=127.0.0.1@1"
        .parse::<ncx::config::ServiceSpec>()
        .is_err());
    assert!("127.0.0.1:1@1".parse::<ncx::config::ServiceSpec>().is_err());
    assert!("a b=127.0.0.1:1@1"
        .parse::<ncx::config::ServiceSpec>()
        .is_err());
}

#[test]
fn authentication_methods_are_validated_and_located() {
    let id = |extra: &str| format!("[[identities]]\nname = \"a\"\n{extra}");
    let e = server_err(&id("token = \"t\"\nauth = \"password\"\n"));
    assert!(
        e.starts_with("server.toml:4:") && e.contains("auth") && e.contains("\"password\""),
        "{e}"
    );
    // A certificate identity needs the client CA.
    let e = server_err(&id("auth = \"certificate\"\n"));
    assert!(
        e.starts_with("server.toml:3:") && e.contains("tls.client_ca"),
        "{e}"
    );
    // A token given to a certificate-only identity would be silently unused: refused.
    let e = server_err(&format!(
        "[tls]\nclient_ca = \"ca.crt\"\n{}",
        id("token = \"t\"\nauth = \"certificate\"\n")
    ));
    assert!(
        e.starts_with("server.toml:5:") && e.contains("not used with auth"),
        "{e}"
    );
    let e = server_err(&id("auth = \"both\"\n"));
    assert!(e.contains("has no token"), "{e}");
    // Without ports the identity may still offer private services and visit.
    let s = ServerSettings::from_source(&Source::text(
        "server.toml",
        &format!(
            "[tls]\nclient_ca = \"ca.crt\"\n{}",
            id("auth = \"certificate\"\n")
        ),
    ))
    .unwrap();
    assert!(s.identities[0].ports.is_empty());
    assert!(s.identities[0].auth.needs_certificate());
    assert!(s.identities[0].auth.token().is_none());
}

#[test]
fn private_services_and_visits_are_validated_and_located() {
    let head = format!(
        "server = \"h:1\"\nidentity = \"a\"\ntoken = \"t\"\nserver_fingerprint = \"sha256:{}\"\n",
        "ab".repeat(32)
    );
    let svc = |extra: &str| {
        format!("{head}[[services]]\nname = \"rdp\"\nlocal = \"127.0.0.1:3389\"\n{extra}")
    };
    let e = client_err(&svc("private = true\n"));
    assert!(
        e.starts_with("client.toml:8:") && e.contains("needs `visitors`"),
        "{e}"
    );
    let e = client_err(&svc("visitors = [\"alice\"]\n"));
    assert!(
        e.starts_with("client.toml:8:") && e.contains("add `private = true`"),
        "{e}"
    );
    let e = client_err(&svc("private = true\nvisitors = []\n"));
    assert!(e.contains("at least one identity"), "{e}");
    let e = client_err(&svc("private = true\nvisitors = [\"al ice\"]\n"));
    assert!(
        e.starts_with("client.toml:9:") && e.contains("visitors"),
        "{e}"
    );
    let e = client_err(&svc(
        "private = true\nvisitors = [\"alice\"]\nremote_port = 3389\n",
    ));
    assert!(e.contains("`remote_port` does not apply"), "{e}");
    let e = client_err(&svc(
        "private = true\nvisitors = [\"alice\"]\nallow = [\"10.0.0.0/8\"]\n",
    ));
    assert!(e.contains("`allow` does not apply"), "{e}");
    let c = ClientSettings::from_source(
        &Source::text(
            "client.toml",
            &svc("private = true\nvisitors = [\"alice\", \"bob\"]\n"),
        ),
        ClientFile::default(),
        None,
    )
    .unwrap();
    assert_eq!(c.services[0].visitors.as_ref().map(Vec::len), Some(2));

    let visit = |listen: &str| {
        format!("{head}[[visits]]\nservice = \"office/rdp\"\nlisten = \"{listen}\"\n")
    };
    let e = client_err(&visit("127.0.0.1:13389").replace("office/rdp", "rdp"));
    assert!(
        e.starts_with("client.toml:6:") && e.contains("expected OWNER/SERVICE"),
        "{e}"
    );
    let e = client_err(&visit("localhost:13389"));
    assert!(
        e.starts_with("client.toml:7:") && e.contains("listen") && e.contains("IP:PORT"),
        "{e}"
    );
    let e = client_err(&format!(
        "{}[[visits]]\nservice = \"office/ssh\"\nlisten = \"127.0.0.1:13389\"\n",
        visit("127.0.0.1:13389")
    ));
    assert!(e.contains("used by two visits"), "{e}");
    // A client with only visits is what `ncx visit` runs.
    let c = ClientSettings::from_source(
        &Source::text("visit.toml", &visit("127.0.0.1:13389")),
        ClientFile::default(),
        None,
    )
    .unwrap();
    assert!(c.services.is_empty());
    assert_eq!(c.visits[0].listen.port(), 13389);
    let e = client_err(&head);
    assert!(e.contains("nothing to do"), "{e}");
    // A certificate alone may stand in for the token; cert and key come together.
    let e =
        client_err(&visit("127.0.0.1:1").replacen("[[visits]]", "cert = \"c.pem\"\n[[visits]]", 1));
    assert!(e.contains("given without key"), "{e}");
}

#[test]
fn remote_desktop_example_configs_parse() {
    // The certificates the walkthrough makes with `ncx certs`, in a scratch `certs/`.
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    ncx::certs::create_ca(&certs, "ncx CA", false).unwrap();
    ncx::certs::create_leaf(
        &certs,
        ncx::certs::LeafKind::Server,
        &["tunnel.example.com".into()],
        "server",
        false,
    )
    .unwrap();
    for who in ["office-pc", "alice"] {
        ncx::certs::create_leaf(
            &certs,
            ncx::certs::LeafKind::Client,
            &[who.into()],
            &format!("client-{who}"),
            false,
        )
        .unwrap();
    }
    let read = |name: &str| {
        std::fs::read_to_string(examples().join("remote-desktop").join(name))
            .unwrap()
            .replace("\"certs/", &format!("\"{}/", certs.display()))
    };
    let s =
        ServerSettings::from_source(&Source::text("server.toml", &read("server.toml"))).unwrap();
    assert!(s.client_ca.is_some());
    assert_eq!(s.auth_failures_before_block, 5);
    let names: Vec<_> = s.identities.iter().map(|i| i.name.to_string()).collect();
    assert_eq!(names, ["office-pc", "alice", "bob"]);
    assert!(s.identities.iter().all(|i| i.ports.is_empty()));
    assert!(s.identities.iter().all(|i| i.auth.needs_certificate()));
    assert!(s.identities[0].auth.token().is_some());
    assert!(!format!("{s:?}").contains("change-me"), "{s:?}");

    let office = ClientSettings::from_source(
        &Source::text("office-pc.toml", &read("office-pc.toml")),
        ClientFile::default(),
        None,
    )
    .unwrap();
    assert!(office.client_cert.is_some() && office.token.is_some());
    let visitors: Vec<_> = office
        .services
        .iter()
        .map(|s| (s.name.to_string(), s.visitors.clone().unwrap().len()))
        .collect();
    assert_eq!(
        visitors,
        [("office-rdp".to_owned(), 1), ("office-ssh".to_owned(), 2)]
    );
    assert!(!format!("{office:?}").contains("change-me"));

    let alice = ClientSettings::from_source(
        &Source::text("alice.toml", &read("alice.toml")),
        ClientFile::default(),
        None,
    )
    .unwrap();
    assert!(alice.token.is_none() && alice.client_cert.is_some());
    assert!(alice.services.is_empty());
    let visits: Vec<_> = alice
        .visits
        .iter()
        .map(|v| (format!("{}/{}", v.owner, v.service), v.listen.to_string()))
        .collect();
    assert_eq!(
        visits,
        [
            (
                "office-pc/office-rdp".to_owned(),
                "127.0.0.1:13389".to_owned()
            ),
            (
                "office-pc/office-ssh".to_owned(),
                "127.0.0.1:10022".to_owned()
            )
        ]
    );
    assert!(alice.visits.iter().all(|v| v.listen.ip().is_loopback()));
}

#[test]
fn readme_toml_snippets_are_taken_from_the_example_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut all = String::new();
    for dir in [
        examples(),
        examples().join("remote-desktop"),
        examples().join("load-balancer"),
        examples().join("website"),
        examples().join("through-a-proxy"),
        examples().join("websocket"),
        examples().join("high-availability"),
    ] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                all.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let mut checked = 0;
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("closed code block");
        let snippet = &body[..end];
        assert!(
            all.contains(snippet),
            "README snippet not found verbatim in examples/:\n{snippet}"
        );
        checked += 1;
        rest = &body[end..];
    }
    assert!(checked >= 2, "found only {checked} toml snippets");
}

/// Every duration is range-checked: `u64::MAX` seconds used to overflow the first deadline or
/// doubling it met and panic every connection task (hostile-peers issue, finding 10).
#[test]
fn every_duration_is_range_checked() {
    let max = ncx::config::MAX_SECS;
    for key in [
        "handshake_timeout_secs",
        "ping_interval_secs",
        "liveness_timeout_secs",
        "drain_timeout_secs",
        "auth_block_secs",
    ] {
        for v in [u64::MAX, max + 1] {
            let e = server_err(&format!("{key} = {v}\n{ID}"));
            assert!(
                e.starts_with("server.toml:1:") && e.contains(key) && e.contains("at most"),
                "{key} = {v}: {e}"
            );
        }
    }
    let fp = format!("sha256:{}", "ab".repeat(32));
    let base = format!("server = \"h:1\"\nidentity = \"a\"\ntoken = \"t\"\nserver_fingerprint = \"{fp}\"\n[[services]]\nname = \"s\"\nlocal = \"127.0.0.1:1\"\n");
    for key in [
        "connect_timeout_secs",
        "handshake_timeout_secs",
        "local_connect_timeout_secs",
        "ping_interval_secs",
        "liveness_timeout_secs",
        "drain_timeout_secs",
        "reconnect_initial_secs",
        "reconnect_max_secs",
    ] {
        let e = client_err(&format!("{key} = {}\n{base}", u64::MAX));
        assert!(
            e.starts_with("client.toml:1:") && e.contains(key) && e.contains("at most"),
            "{key}: {e}"
        );
    }
    // A year is still accepted where nothing else forbids it.
    ServerSettings::from_source(&Source::text(
        "server.toml",
        &format!("drain_timeout_secs = {max}\nauth_block_secs = {max}\n{ID}"),
    ))
    .expect("a year is in range");
}

#[test]
fn an_identity_share_larger_than_the_server_is_refused() {
    let e = server_err(&format!(
        "max_sessions = 10\nmax_sessions_per_identity = 11\n{ID}"
    ));
    assert!(
        e.starts_with("server.toml:2:")
            && e.contains("max_sessions_per_identity")
            && e.contains("at most max_sessions (10)"),
        "{e}"
    );
    let s = ServerSettings::from_source(&Source::text(
        "server.toml",
        &format!("max_sessions = 8\nmax_services_per_session = 5\n{ID}"),
    ))
    .unwrap();
    // The default share never exceeds a smaller global cap.
    assert_eq!(
        (s.max_sessions_per_identity, s.max_services_per_session),
        (8, 5)
    );
}

#[test]
fn the_client_visitor_cap_is_range_checked() {
    let fp = format!("sha256:{}", "ab".repeat(32));
    let base = format!("server = \"h:1\"\nidentity = \"a\"\ntoken = \"t\"\nserver_fingerprint = \"{fp}\"\n[[services]]\nname = \"s\"\nlocal = \"127.0.0.1:1\"\n");
    for v in ["0", "15361"] {
        let e = client_err(&format!("max_visitors = {v}\n{base}"));
        assert!(
            e.starts_with("client.toml:1:") && e.contains("max_visitors"),
            "{v}: {e}"
        );
    }
}

#[test]
fn a_handshake_share_larger_than_the_server_is_refused() {
    let e = server_err(&format!(
        "max_handshakes = 8\nmax_handshakes_per_source = 9\n{ID}"
    ));
    assert!(
        e.starts_with("server.toml:2:")
            && e.contains("max_handshakes_per_source")
            && e.contains("at most max_handshakes (8)"),
        "{e}"
    );
    let s = ServerSettings::from_source(&Source::text(
        "server.toml",
        &format!("max_handshakes = 4\n{ID}"),
    ))
    .unwrap();
    // The default share never exceeds a smaller global cap.
    assert_eq!((s.max_handshakes, s.max_handshakes_per_source), (4, 4));
    let s = ServerSettings::from_source(&Source::text("server.toml", ID)).unwrap();
    assert_eq!((s.max_handshakes, s.max_handshakes_per_source), (64, 16));
}

#[test]
fn paths_in_a_client_file_are_relative_to_the_file() {
    // At 8354efb they were relative to the working directory: `ncx visit --config /tmp/x/alice.toml`
    // read `certs/client-alice.crt` from wherever it was started.
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    ncx::certs::create_ca(&certs, "test CA", false).unwrap();
    ncx::certs::create_leaf(
        &certs,
        ncx::certs::LeafKind::Client,
        &["alice".into()],
        "client-alice",
        false,
    )
    .unwrap();
    let path = dir.path().join("alice.toml");
    std::fs::write(
        &path,
        format!(
            "server = \"127.0.0.1:7835\"\nidentity = \"alice\"\nserver_fingerprint = \"sha256:{}\"\ncert = \"certs/client-alice.crt\"\nkey = \"certs/client-alice.key\"\n\n[[visits]]\nservice = \"office/rdp\"\nlisten = \"127.0.0.1:0\"\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    // The tests run from the package directory, which has no certs/client-alice.crt.
    assert!(!std::path::Path::new("certs/client-alice.crt").exists());
    let s = ClientSettings::from_source(&Source::file(&path).unwrap(), Default::default(), None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(s.client_cert.is_some());
}

#[test]
fn the_self_signed_certificate_lives_beside_the_server_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    std::fs::write(&path, ID).unwrap();
    let s = ServerSettings::from_source(&Source::file(&path).unwrap()).unwrap();
    match s.cert {
        ncx::config::ServerCert::Auto(d) => assert_eq!(d, dir.path().join("certs")),
        other => panic!("{other:?}"),
    }
    // A relative auto_cert_dir is relative to the file too.
    std::fs::write(&path, format!("[tls]\nauto_cert_dir = \"state/tls\"\n{ID}")).unwrap();
    let s = ServerSettings::from_source(&Source::file(&path).unwrap()).unwrap();
    match s.cert {
        ncx::config::ServerCert::Auto(d) => assert_eq!(d, dir.path().join("state/tls")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ports_may_be_numbers_or_strings() {
    // At 8354efb `ports = [20000]` was refused: "invalid type: integer `20000`, expected a string".
    let s = ServerSettings::from_source(&Source::text(
        "server.toml",
        "[[identities]]\nname = \"a\"\ntoken = \"t\"\nports = [3389, \"20000-20010\", \"8080\"]\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let p = &s.identities[0];
    assert!(p.allows(3389) && p.allows(20005) && p.allows(8080) && !p.allows(3390));
    let e = server_err("[[identities]]\nname = \"a\"\ntoken = \"t\"\nports = [70000]\n");
    assert!(
        e.starts_with("server.toml:4:") && e.contains("ports"),
        "{e}"
    );
    let e = server_err("[[identities]]\nname = \"a\"\ntoken = \"t\"\nports = [true]\n");
    assert!(
        e.contains("a port (3389) or a range of ports (\"20000-20100\")"),
        "{e}"
    );
}

#[test]
fn two_identities_with_overlapping_ports_are_refused() {
    // At 8354efb accepted silently: whichever client connected first took the port.
    let e = server_err(
        "[[identities]]\nname = \"a\"\ntoken = \"t\"\nports = [\"20000-20100\"]\n\n[[identities]]\nname = \"b\"\ntoken = \"u\"\nports = [3389, \"20050-20200\"]\n",
    );
    assert!(
        e.starts_with("server.toml:9:") && e.contains("port 20050 is also allowed for identity a"),
        "{e}"
    );
}

#[test]
fn toml_mistakes_are_answered_with_what_to_write() {
    // At 8354efb: "invalid type: map, expected a sequence" and "invalid float, expected nothing".
    let e = server_err("[identities]\nname = \"a\"\ntoken = \"t\"\n");
    assert_eq!(
        e,
        "server.toml:1:1: [identities]: [identities] is a list of tables: write [[identities]] (two brackets) above each entry"
    );
    let e = server_err(&format!("listen = 0.0.0.0:7835\n{ID}"));
    assert_eq!(
        e,
        "server.toml:1:13: listen: invalid float, expected nothing: text must be quoted, e.g. listen = \"0.0.0.0:7835\""
    );
}

#[test]
fn a_token_file_is_read_relative_to_its_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("office.token"), "s3cret\n").unwrap();
    let client = dir.path().join("client.toml");
    std::fs::write(
        &client,
        format!(
            "server = \"127.0.0.1:7835\"\nidentity = \"office\"\ntoken_file = \"office.token\"\nserver_fingerprint = \"sha256:{}\"\n\n[[visits]]\nservice = \"pc/rdp\"\nlisten = \"127.0.0.1:0\"\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let c = ClientSettings::from_source(&Source::file(&client).unwrap(), Default::default(), None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.token, Some(ncx::auth::Token::new("s3cret")));
    let from = c.token_source.unwrap();
    assert!(from.starts_with("`token_file` in "), "{from}");
    assert!(
        from.ends_with(&format!("({})", dir.path().join("office.token").display())),
        "{from}"
    );
    let server = dir.path().join("server.toml");
    std::fs::write(
        &server,
        "[[identities]]\nname = \"office\"\ntoken_file = \"office.token\"\nports = [20000]\n",
    )
    .unwrap();
    let s = ServerSettings::from_source(&Source::file(&server).unwrap())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.identities[0].auth.token(),
        Some(&ncx::auth::Token::new("s3cret"))
    );
}

#[test]
fn token_file_mistakes_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.token");
    let e = server_err(&format!(
        "[[identities]]\nname = \"a\"\ntoken_file = \"{}\"\nports = [20000]\n",
        missing.display()
    ));
    assert_eq!(
        e,
        format!(
            "server.toml:3:14: token_file: reading {}: no such file",
            missing.display()
        )
    );
    let e = server_err(
        "[[identities]]\nname = \"a\"\ntoken = \"t\"\ntoken_file = \"x\"\nports = [20000]\n",
    );
    assert_eq!(
        e,
        "server.toml:4:14: token_file: set either `token` or `token_file`, not both"
    );
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    let e = client_err(&format!(
        "server = \"127.0.0.1:7835\"\nidentity = \"a\"\ntoken_file = \"{}\"\ninsecure_skip_verify = true\n",
        empty.display()
    ));
    assert_eq!(
        e,
        format!(
            "client.toml:3:14: token_file: {} is empty: write the token into it",
            empty.display()
        )
    );
}

#[test]
fn proxy_settings_are_checked_and_located() {
    use ncx::proxy::{ProxySetting, Scheme};
    let base = format!(
        "server = \"tunnel.example.com:443\"\nidentity = \"a\"\ntoken = \"t\"\nserver_fingerprint = \"sha256:{}\"\n\n[[visits]]\nservice = \"pc/rdp\"\nlisten = \"127.0.0.1:0\"\n",
        "ab".repeat(32)
    );
    let parse = |extra: &str| {
        ClientSettings::from_source(
            &Source::text("client.toml", &format!("{extra}{base}")),
            ClientFile::default(),
            None,
        )
    };
    // No proxy key: the environment decides when the client starts.
    assert_eq!(parse("").unwrap().proxy, ProxySetting::FromEnvironment);
    assert_eq!(
        parse("proxy = \"direct\"\n").unwrap().proxy,
        ProxySetting::Direct
    );
    match parse("proxy = \"socks5://gw.corp\"\n").unwrap().proxy {
        ProxySetting::Url(u) => assert_eq!((u.scheme, u.port), (Scheme::Socks5, 1080)),
        other => panic!("{other:?}"),
    }
    let e = parse("proxy = \"ftp://gw\"\n").unwrap_err().to_string();
    assert_eq!(
        e,
        "client.toml:1:9: proxy: proxy scheme \"ftp\": expected http://, https:// or socks5://"
    );
    // The password from a file, for the URL's user; never shown.
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("proxy.pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let s = parse(&format!(
        "proxy = \"http://alice@proxy.corp:3128\"\nproxy_password_file = \"{}\"\n",
        pw.display()
    ))
    .unwrap();
    match &s.proxy {
        ProxySetting::Url(u) => assert_eq!(u.password(), Some("s3cret")),
        other => panic!("{other:?}"),
    }
    assert!(!format!("{s:?}").contains("s3cret"), "{s:?}");
    let e = parse(&format!(
        "proxy = \"http://proxy.corp:3128\"\nproxy_password_file = \"{}\"\n",
        pw.display()
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("client.toml:2:23: proxy_password_file: needs a proxy URL with a user"),
        "{e}"
    );
}

#[test]
fn proxy_protocol_sources_are_parsed_and_located() {
    let s = ServerSettings::from_source(&Source::text(
        "server.toml",
        &format!("proxy_protocol_from = [\"10.0.0.5\", \"10.1.0.0/16\", \"2001:db8::/32\"]\n{ID}"),
    ))
    .unwrap();
    let from = &s.proxy_protocol_from;
    assert_eq!(from.len(), 3);
    assert!(from[0].contains("10.0.0.5".parse().unwrap()));
    assert!(!from[0].contains("10.0.0.6".parse().unwrap()));
    assert!(from[1].contains("10.1.200.3".parse().unwrap()));
    let e = server_err(&format!(
        "proxy_protocol_from = [\"10.0.0.5\", \"lb.example\"]\n{ID}"
    ));
    assert!(
        e.starts_with("server.toml:1:36") && e.contains("proxy_protocol_from"),
        "{e}"
    );
    let e = server_err(&format!("proxy_protocol_from = [\"10.0.0.0/33\"]\n{ID}"));
    assert!(e.contains("prefix /33"), "{e}");
    // Absent: nobody is trusted to speak for a client.
    let s = ServerSettings::from_source(&Source::text("server.toml", ID)).unwrap();
    assert!(s.proxy_protocol_from.is_empty());
}

#[test]
fn example_load_balancer_server_config_parses() {
    let path = examples().join("load-balancer").join("server.toml");
    let s = ServerSettings::from_source(&Source::file(&path).unwrap()).unwrap();
    assert_eq!(s.proxy_protocol_from.len(), 1);
    assert!(s.proxy_protocol_from[0].contains("10.0.0.2".parse().unwrap()));
    assert!(!s.proxy_protocol_from[0].contains("10.0.0.3".parse().unwrap()));
}

#[test]
fn a_fallback_is_a_host_and_port() {
    let s = ServerSettings::from_source(&Source::text(
        "server.toml",
        &format!("fallback = \"127.0.0.1:8443\"\nmax_fallback_connections = 64\n{ID}"),
    ))
    .unwrap();
    assert_eq!(s.fallback.as_deref(), Some("127.0.0.1:8443"));
    assert_eq!(s.max_fallback_connections, 64);
    let e = server_err(&format!("fallback = \"127.0.0.1\"\n{ID}"));
    assert!(
        e.starts_with("server.toml:1:12") && e.contains("fallback"),
        "{e}"
    );
    let e = server_err(&format!("max_fallback_connections = 0\n{ID}"));
    assert!(e.contains("at least 1"), "{e}");
}

#[test]
fn example_website_server_config_parses() {
    let path = examples().join("website").join("server.toml");
    let s = ServerSettings::from_source(&Source::file(&path).unwrap()).unwrap();
    assert_eq!(s.listen.port(), 443);
    assert_eq!(s.fallback.as_deref(), Some("127.0.0.1:8443"));
}

#[test]
fn example_client_config_through_a_proxy_parses() {
    let path = examples().join("through-a-proxy").join("client.toml");
    let c = ClientSettings::from_source(&Source::file(&path).unwrap(), ClientFile::default(), None)
        .unwrap();
    match &c.proxy {
        ncx::proxy::ProxySetting::Url(u) => {
            assert_eq!(u.to_string(), "http://proxy.corp.example:3128")
        }
        other => panic!("expected the configured proxy, got {other:?}"),
    }
}

#[test]
fn the_websocket_transport_is_checked_and_located() {
    const REST: &str = "identity = \"a\"\ntoken = \"t\"\ninsecure_skip_verify = true\n[[services]]\nname = \"e\"\nlocal = \"127.0.0.1:7\"\nremote_port = 0\n";
    let ok = |text: &str| {
        ClientSettings::from_source(
            &Source::text("client.toml", &format!("{text}{REST}")),
            ClientFile::default(),
            None,
        )
        .unwrap()
    };
    let c = ok("transport = \"websocket\"\nurl = \"wss://cdn.example.com/t/ncx\"\n");
    let ws = c.websocket.as_ref().unwrap();
    assert_eq!(c.server, "cdn.example.com:443");
    assert_eq!(ws.host_header, "cdn.example.com");
    assert_eq!(ws.url.path, "/t/ncx");
    assert_eq!(
        format!("{:?}", c.server_name),
        format!(
            "{:?}",
            rustls::pki_types::ServerName::try_from("cdn.example.com").unwrap()
        )
    );
    let c = ok("transport = \"websocket\"\nurl = \"ws://10.0.0.5:8080/ncx\"\nwebsocket_host = \"tunnel.example.com\"\n");
    assert_eq!(c.server, "10.0.0.5:8080");
    assert_eq!(c.websocket.unwrap().host_header, "tunnel.example.com");
    assert!(ok("server = \"h:1\"\ntransport = \"tcp\"\n")
        .websocket
        .is_none());
    let err = |text: &str| client_err(&format!("{text}{REST}"));
    let e = err("transport = \"quic\"\nserver = \"h:1\"\n");
    assert!(
        e.starts_with("client.toml:1:13") && e.contains("\"tcp\" or \"websocket\""),
        "{e}"
    );
    let e = err("transport = \"websocket\"\n");
    assert!(e.contains("needs `url`"), "{e}");
    let e = err("transport = \"websocket\"\nurl = \"https://h/ncx\"\n");
    assert!(
        e.starts_with("client.toml:2:7") && e.contains("ws:// or wss://"),
        "{e}"
    );
    let e = err("server = \"h:1\"\ntransport = \"websocket\"\nurl = \"wss://h/ncx\"\n");
    assert!(
        e.starts_with("client.toml:1:") && e.contains("remove `server`"),
        "{e}"
    );
    let e = err("server = \"h:1\"\nurl = \"wss://h/ncx\"\n");
    assert!(
        e.starts_with("client.toml:2:") && e.contains("only used with transport"),
        "{e}"
    );
    let e = err("transport = \"websocket\"\nurl = \"ws://h/ncx\"\nwebsocket_ca = \"ca.pem\"\n");
    assert!(e.contains("only used with a wss:// url"), "{e}");
}

#[test]
fn a_websocket_path_is_a_plain_path() {
    let s = ServerSettings::from_source(&Source::text(
        "server.toml",
        &format!("websocket_path = \"/ncx\"\n{ID}"),
    ))
    .unwrap();
    assert_eq!(s.websocket_path.as_deref(), Some("/ncx"));
    for bad in ["ncx", "/a b", "/n?x=1", "/#f"] {
        let e = server_err(&format!("websocket_path = \"{bad}\"\n{ID}"));
        assert!(
            e.starts_with("server.toml:1:18") && e.contains("websocket_path"),
            "{e}"
        );
    }
}

#[test]
fn example_websocket_configs_parse() {
    let dir = examples().join("websocket");
    let s = ServerSettings::from_source(&Source::file(&dir.join("server.toml")).unwrap()).unwrap();
    assert_eq!(s.websocket_path.as_deref(), Some("/ncx"));
    let c = ClientSettings::from_source(
        &Source::file(&dir.join("client.toml")).unwrap(),
        ClientFile::default(),
        None,
    )
    .unwrap();
    let ws = c.websocket.unwrap();
    assert_eq!(ws.url.to_string(), "wss://tunnel.example.com:443/ncx");
    assert_eq!(ws.host_header, "tunnel.example.com");
}

/// `examples/high-availability/`: the two servers' file with its groups, the gateways on both
/// servers with their instances, groups and health checks, and alice's failover visit. The files
/// name token files; copies of them sit beside copies of the examples here.
#[test]
fn example_high_availability_configs_parse() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(examples().join("high-availability")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    for who in ["office", "reports", "alice"] {
        let token = dir.path().join(format!("{who}.token"));
        std::fs::write(&token, "a-long-random-secret\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let s = ServerSettings::from_source(&Source::file(&dir.path().join("server.toml")).unwrap())
        .unwrap();
    let groups: Vec<_> = s.groups.iter().map(|g| g.name.to_string()).collect();
    assert_eq!(groups, ["intranet", "desks"]);
    assert!(s.groups[0].allows(8443) && !s.groups[0].allows(8444));
    assert_eq!(s.groups[0].balance, ncx::config::Balance::LeastConnections);
    assert!(s.groups[1].ports.is_empty(), "desks is private only");
    assert_eq!(s.groups[1].balance, ncx::config::Balance::RoundRobin);

    let client = |name: &str| {
        ClientSettings::from_source(
            &Source::file(&dir.path().join(name)).unwrap(),
            ClientFile::default(),
            None,
        )
        .unwrap()
    };
    let mut instances = Vec::new();
    for name in ["office-gw-1.toml", "office-gw-2.toml"] {
        let c = client(name);
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.server_mode, ncx::config::ServerMode::All);
        assert!(matches!(&c.trust, ServerTrust::Pinned(fps) if fps.len() == 2));
        let groups: Vec<_> = c
            .services
            .iter()
            .map(|s| s.group.clone().unwrap().to_string())
            .collect();
        assert_eq!(groups, ["intranet", "desks"]);
        assert!(c.services.iter().all(|s| s.health.is_some()));
        assert!(matches!(
            c.services[0].health.as_ref().unwrap().probe,
            ncx::config::HealthProbe::Http { .. }
        ));
        assert_eq!(c.services[0].remote_port, 8443);
        instances.push(c.instance.unwrap().to_string());
    }
    assert_eq!(instances, ["gw-1", "gw-2"]);
    let alice = client("alice.toml");
    assert_eq!(alice.server_mode, ncx::config::ServerMode::Failover);
    assert_eq!(alice.visits.len(), 1);
    assert_eq!(alice.visits[0].owner.as_str(), "desks");
}

#[test]
fn a_udp_service_is_written_with_protocol_or_a_flag_suffix_and_refuses_what_udp_lacks() {
    let base = "server = \"h:1\"\nidentity = \"a\"\ntoken = \"t\"\nserver_fingerprint = \"sha256:5f1c0d4e3a2b19087766554433221100ffeeddccbbaa99887766554433221100\"\n";
    let c = ClientSettings::from_source(
        &Source::text(
            "client.toml",
            &format!("{base}[[services]]\nname = \"dns\"\nlocal = \"127.0.0.1:53\"\nprotocol = \"udp\"\n"),
        ),
        ClientFile::default(),
        None,
    )
    .unwrap();
    assert!(c.services[0].udp);
    let flag: ncx::config::ServiceSpec = "dns=127.0.0.1:53@5353/udp".parse().unwrap();
    assert!(flag.udp && flag.remote_port == 5353 && flag.local == "127.0.0.1:53");
    let tcp: ncx::config::ServiceSpec = "web=127.0.0.1:80@8080".parse().unwrap();
    assert!(!tcp.udp);
    let e = client_err(&format!(
        "{base}[[services]]\nname = \"dns\"\nlocal = \"127.0.0.1:53\"\nprotocol = \"sctp\"\n"
    ));
    assert!(
        e.contains("client.toml:8:") && e.contains("protocol") && e.contains("\"sctp\""),
        "{e}"
    );
    let e = client_err(&format!(
        "{base}[[services]]\nname = \"dns\"\nlocal = \"127.0.0.1:53\"\nprotocol = \"udp\"\nproxy_protocol = \"v1\"\n"
    ));
    assert!(
        e.contains("proxy_protocol") && e.contains("version 2 only"),
        "{e}"
    );
    let e = client_err(&format!(
        "{base}[[services]]\nname = \"dns\"\nlocal = \"127.0.0.1:53\"\nprotocol = \"udp\"\ngroup = \"g\"\n"
    ));
    assert!(
        e.contains("group") && e.contains("not supported for UDP"),
        "{e}"
    );
}
