use kvmkit_vmm::rpc::VmmAction;
use kvmkit_vmm::vmm_config::{
    BlockDeviceConfig, BlockDeviceUpdate, BootSourceConfig, EntropyDeviceConfig, HugePages, LogLevel, LoggerConfig,
    MachineConfig, MachineConfigUpdate, MetricsConfig, NetworkInterfaceConfig,
};

use super::*;

fn vmm(method: &str, path: &str, body: &str) -> VmmAction {
    match parse_request(method, path, body.as_bytes()) {
        Ok(ParsedRequest::Vmm(a)) => a,
        other => panic!("{method} {path} {body}: {other:?}"),
    }
}

fn err(method: &str, path: &str, body: &str) -> RequestError {
    match parse_request(method, path, body.as_bytes()) {
        Err(e) => {
            assert_eq!(e.status(), 400);
            e
        }
        Ok(ok) => panic!("{method} {path} {body}: accepted as {ok:?}"),
    }
}

/// The fault message, checked to be short and free of control characters.
fn msg(method: &str, path: &str, body: &str) -> String {
    let m = err(method, path, body).to_string();
    assert!(m.len() <= 1024, "{} bytes: {m}", m.len());
    assert!(!m.chars().any(char::is_control), "{m:?}");
    m
}

// ---- every route, accepted ----

#[test]
fn get_routes() {
    assert_eq!(vmm("GET", "/", ""), VmmAction::GetInstanceInfo);
    assert_eq!(parse_request("GET", "/version", b""), Ok(ParsedRequest::GetVersion));
    assert_eq!(vmm("GET", "/vm/config", ""), VmmAction::GetVmConfig);
    assert_eq!(vmm("GET", "/machine-config", ""), VmmAction::GetMachineConfig);
    assert_eq!(vmm("GET", "/metrics", ""), VmmAction::GetMetrics);
}

#[test]
fn absolute_form_targets_are_accepted() {
    assert_eq!(vmm("GET", "http://localhost/", ""), VmmAction::GetInstanceInfo);
    assert_eq!(vmm("GET", "http://localhost", ""), VmmAction::GetInstanceInfo);
    assert_eq!(vmm("GET", "HTTP://localhost/vm/config", ""), VmmAction::GetVmConfig);
    assert!(msg("GET", "http://localhost?x=1", "").contains("query strings"));
}

#[test]
fn machine_config() {
    assert_eq!(
        vmm(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "huge_pages": "Transparent"}"#
        ),
        VmmAction::PutMachineConfig(MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 256,
            huge_pages: HugePages::Transparent,
            ..MachineConfig::default()
        })
    );
    assert_eq!(
        vmm("PATCH", "/machine-config", r#"{"mem_size_mib": 512}"#),
        VmmAction::PatchMachineConfig(MachineConfigUpdate {
            mem_size_mib: Some(512),
            ..Default::default()
        })
    );
    // PUT needs both required fields.
    let m = msg("PUT", "/machine-config", r#"{"vcpu_count": 2}"#);
    assert!(
        m.contains("missing field `mem_size_mib`") && m.contains("MachineConfiguration"),
        "{m}"
    );
}

#[test]
fn boot_source() {
    assert_eq!(
        vmm(
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}"#
        ),
        VmmAction::PutBootSource(BootSourceConfig {
            kernel_image_path: "/k".into(),
            initrd_path: Some("/i".into()),
            boot_args: Some("console=ttyS0".into()),
        })
    );
}

#[test]
fn drives() {
    assert_eq!(
        vmm(
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/r.img", "is_root_device": true, "is_read_only": true}"#
        ),
        VmmAction::PutDrive(BlockDeviceConfig {
            drive_id: "rootfs".into(),
            path_on_host: "/r.img".into(),
            is_root_device: true,
            is_read_only: true,
            ..Default::default()
        })
    );
    assert_eq!(
        vmm(
            "PATCH",
            "/drives/scratch-1.v2",
            r#"{"drive_id": "scratch-1.v2", "path_on_host": "/new.img"}"#
        ),
        VmmAction::PatchDrive(BlockDeviceUpdate {
            drive_id: "scratch-1.v2".into(),
            path_on_host: Some("/new.img".into()),
            rate_limiter: None,
        })
    );
}

#[test]
fn network_interfaces() {
    assert_eq!(
        vmm(
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}"#
        ),
        VmmAction::PutNetworkInterface(NetworkInterfaceConfig {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some("06:00:ac:10:00:02".into()),
            ..Default::default()
        })
    );
}

#[test]
fn entropy_logger_metrics() {
    assert_eq!(
        vmm("PUT", "/entropy", "{}"),
        VmmAction::PutEntropy(EntropyDeviceConfig::default())
    );
    assert_eq!(
        vmm(
            "PUT",
            "/logger",
            r#"{"log_path": "/tmp/l", "level": "Warning", "show_level": true}"#
        ),
        VmmAction::PutLogger(LoggerConfig {
            log_path: Some("/tmp/l".into()),
            level: Some(LogLevel::Warning),
            show_level: Some(true),
            ..Default::default()
        })
    );
    assert_eq!(
        vmm("PUT", "/metrics", r#"{"metrics_path": "/tmp/m"}"#),
        VmmAction::PutMetrics(MetricsConfig {
            metrics_path: "/tmp/m".into()
        })
    );
}

#[test]
fn actions() {
    for (t, a) in [
        ("InstanceStart", VmmAction::InstanceStart),
        ("SendCtrlAltDel", VmmAction::SendCtrlAltDel),
        ("FlushMetrics", VmmAction::FlushMetrics),
    ] {
        assert_eq!(vmm("PUT", "/actions", &format!(r#"{{"action_type": "{t}"}}"#)), a);
    }
    let m = msg("PUT", "/actions", r#"{"action_type": "Reboot"}"#);
    assert!(
        m.contains("unknown variant `Reboot`") && m.contains("InstanceActionInfo"),
        "{m}"
    );
    // Firecracker has no "Stop" action; kvmkit's stop is its own path.
    assert!(msg("PUT", "/actions", r#"{"action_type": "Stop"}"#).contains("unknown variant `Stop`"));
}

#[test]
fn vm_state() {
    assert_eq!(vmm("PATCH", "/vm", r#"{"state": "Paused"}"#), VmmAction::Pause);
    assert_eq!(vmm("PATCH", "/vm", r#"{"state": "Resumed"}"#), VmmAction::Resume);
    assert!(msg("PATCH", "/vm", r#"{"state": "Running"}"#).contains("unknown variant `Running`"));
}

#[test]
fn kvmkit_stop() {
    assert_eq!(vmm("PUT", "/kvmkit/stop", ""), VmmAction::Stop);
    assert_eq!(vmm("PUT", "/kvmkit/stop", " \r\n"), VmmAction::Stop);
    assert_eq!(vmm("PUT", "/kvmkit/stop", "{}"), VmmAction::Stop);
    assert!(msg("PUT", "/kvmkit/stop", r#"{"now": true}"#).contains("unknown field `now`"));
    assert!(msg("POST", "/kvmkit/stop", "").contains("Invalid request method and/or path: POST /kvmkit/stop."));
}

// ---- features kvmkit lacks ----

#[test]
fn unsupported_features_are_named() {
    for (method, path, feature) in [
        ("PUT", "/balloon", "balloon devices are"),
        ("GET", "/balloon", "balloon devices are"),
        ("PATCH", "/balloon", "balloon devices are"),
        ("GET", "/balloon/statistics", "balloon devices are"),
        ("PATCH", "/balloon/statistics", "balloon devices are"),
        ("PATCH", "/balloon/hinting/start", "balloon devices are"),
        ("GET", "/balloon/hinting/status", "balloon devices are"),
        ("PATCH", "/balloon/hinting/stop", "balloon devices are"),
        ("GET", "/mmds", "MMDS"),
        ("PUT", "/mmds", "MMDS"),
        ("PATCH", "/mmds", "MMDS"),
        ("PUT", "/mmds/config", "MMDS"),
        ("PUT", "/cpu-config", "CPU templates are"),
        ("PUT", "/serial", "serial device configuration is"),
        ("PUT", "/hotplug/memory", "memory hotplug is"),
        ("GET", "/hotplug/memory", "memory hotplug is"),
        ("PATCH", "/hotplug/memory", "memory hotplug is"),
        ("PUT", "/pmem/pm0", "virtio-pmem devices are"),
        ("PATCH", "/pmem/pm0", "virtio-pmem devices are"),
        ("DELETE", "/drives/rootfs", "hot-unplugging devices is"),
        ("DELETE", "/network-interfaces/eth0", "hot-unplugging devices is"),
    ] {
        // Whatever the body: the feature is what the client needs to hear.
        for body in ["", "{}", "not json"] {
            let m = msg(method, path, body);
            assert!(
                m.contains(feature) && m.ends_with("not supported by kvmkit yet."),
                "{method} {path}: {m}"
            );
            assert!(matches!(err(method, path, body), RequestError::Unsupported { .. }));
        }
    }
}

#[test]
fn patch_network_interface_is_rate_limiters() {
    let m = msg(
        "PATCH",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#,
    );
    assert_eq!(
        m,
        "PATCH /network-interfaces/eth0: rate limiters are not supported by kvmkit yet."
    );
}

#[test]
fn rate_limiters_that_limit_are_refused() {
    let limiter = r#"{"bandwidth": {"size": 1000, "refill_time": 100}}"#;
    let m = msg("PUT", "/entropy", &format!(r#"{{"rate_limiter": {limiter}}}"#));
    assert!(
        m.contains("entropy device rate limiters are not supported by kvmkit yet"),
        "{m}"
    );
    let m = msg(
        "PUT",
        "/drives/d",
        &format!(r#"{{"drive_id": "d", "path_on_host": "/d", "is_root_device": false, "rate_limiter": {limiter}}}"#),
    );
    assert!(m.contains("rate limiters are not supported by kvmkit yet"), "{m}");
    let m = msg(
        "PATCH",
        "/drives/d",
        &format!(r#"{{"drive_id": "d", "rate_limiter": {limiter}}}"#),
    );
    assert!(m.contains("rate limiters are not supported by kvmkit yet"), "{m}");
    for field in ["rx_rate_limiter", "tx_rate_limiter"] {
        let m = msg(
            "PUT",
            "/network-interfaces/eth0",
            &format!(r#"{{"iface_id": "eth0", "host_dev_name": "tap0", "{field}": {limiter}}}"#),
        );
        assert!(m.contains("rate limiters are not supported by kvmkit yet"), "{m}");
    }
    // A limiter of another type is refused too, not silently dropped.
    assert!(msg("PUT", "/entropy", r#"{"rate_limiter": 5}"#).contains("not supported by kvmkit yet"));
}

#[test]
fn rate_limiters_that_limit_nothing_are_dropped() {
    for limiter in ["null", "{}", r#"{"bandwidth": null, "ops": null}"#] {
        assert_eq!(
            vmm("PUT", "/entropy", &format!(r#"{{"rate_limiter": {limiter}}}"#)),
            VmmAction::PutEntropy(EntropyDeviceConfig::default())
        );
        match vmm(
            "PUT",
            "/drives/d",
            &format!(
                r#"{{"drive_id": "d", "path_on_host": "/d", "is_root_device": false, "rate_limiter": {limiter}}}"#
            ),
        ) {
            VmmAction::PutDrive(d) => assert_eq!(d.rate_limiter, None),
            other => panic!("{other:?}"),
        }
    }
}

// ---- ids ----

#[test]
fn path_and_body_ids_must_match() {
    let put = r#"{"drive_id": "other", "path_on_host": "/d", "is_root_device": false}"#;
    assert_eq!(
        msg("PUT", "/drives/rootfs", put),
        "The id from the path [rootfs] does not match the id from the body [other]!"
    );
    assert_eq!(
        err("PATCH", "/drives/rootfs", r#"{"drive_id": "other"}"#),
        RequestError::IdMismatch {
            path_id: "rootfs".into(),
            body_id: "other".into()
        }
    );
    assert!(msg(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth1", "host_dev_name": "tap0"}"#
    )
    .contains("[eth0] does not match the id from the body [eth1]"));
    // A huge body id is quoted short.
    let long = "x".repeat(10_000);
    let m = msg("PATCH", "/drives/d", &format!(r#"{{"drive_id": "{long}"}}"#));
    assert!(m.contains("does not match") && m.len() < 300, "{m}");
}

#[test]
fn bad_path_ids() {
    let m = msg("PUT", &format!("/drives/{}", "a".repeat(65)), "{}");
    assert!(m.contains("drive_id") && m.contains("65 bytes long; at most 64"), "{m}");
    let m = msg("PUT", &format!("/network-interfaces/{}", "a".repeat(100_000)), "{}");
    assert!(m.contains("iface_id") && m.contains("100000 bytes long"), "{m}");
    let m = msg("PUT", "/drives/a:b", "{}");
    assert!(m.contains("'a:b' may only hold"), "{m}");
    let m = msg("PATCH", "/drives/\u{e9}t\u{e9}", "{}");
    assert!(m.contains("may only hold ASCII letters"), "{m}");
    // The id is checked before the body is looked at.
    assert!(matches!(err("PUT", "/drives/a:b", ""), RequestError::InvalidId { .. }));
}

#[test]
fn collection_paths_need_an_id() {
    assert!(msg("PUT", "/drives", "{}").contains("needs an id in the path: /drives/{drive_id}"));
    assert!(msg("PUT", "/network-interfaces", "{}").contains("/network-interfaces/{iface_id}"));
    assert!(msg("PUT", "/pmem", "{}").contains("/pmem/{id}"));
}

// ---- bodies ----

#[test]
fn missing_bodies() {
    for (method, path) in [
        ("PUT", "/machine-config"),
        ("PATCH", "/machine-config"),
        ("PUT", "/boot-source"),
        ("PUT", "/drives/d"),
        ("PATCH", "/drives/d"),
        ("PUT", "/network-interfaces/eth0"),
        ("PUT", "/entropy"),
        ("PUT", "/actions"),
        ("PATCH", "/vm"),
        ("PUT", "/logger"),
        ("PUT", "/metrics"),
    ] {
        for body in ["", "  \n"] {
            let e = err(method, path, body);
            assert!(matches!(e, RequestError::MissingBody { .. }), "{method} {path}: {e:?}");
            let m = e.to_string();
            assert!(m.starts_with(&format!("{method} {path} needs a JSON body")), "{m}");
        }
    }
}

#[test]
fn get_takes_no_body() {
    for path in ["/", "/version", "/vm/config", "/machine-config", "/metrics"] {
        let m = msg("GET", path, "{}");
        assert_eq!(m, format!("GET {path} takes no body; the request has 2 bytes."));
    }
}

#[test]
fn invalid_json() {
    for body in [
        "{",
        "{\"kernel_image_path\": \"/k\"} trailing",
        "\u{0}",
        "{\"kernel_image_path\": ",
        "nul",
    ] {
        let e = err("PUT", "/boot-source", body);
        assert!(matches!(e, RequestError::InvalidJson { .. }), "{body:?}: {e:?}");
        assert!(e
            .to_string()
            .starts_with("The body of PUT /boot-source is not valid JSON: "));
    }
    // Invalid UTF-8 inside a string.
    let e = parse_request("PUT", "/boot-source", b"{\"kernel_image_path\": \"\xff\"}").unwrap_err();
    assert!(e.to_string().contains("not valid JSON"), "{e}");
    // Deep nesting hits serde_json's recursion limit, not the stack.
    let deep = format!("{{\"rate_limiter\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse_request("PUT", "/entropy", deep.as_bytes()).is_err());
}

#[test]
fn wrong_types_and_unknown_fields() {
    let m = msg(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": "two", "mem_size_mib": 128}"#,
    );
    assert!(
        m.starts_with(
            "The body of PUT /machine-config is not a valid MachineConfiguration: invalid type: string \"two\""
        ),
        "{m}"
    );
    let m = msg("PUT", "/machine-config", r#"{"vcpu_count": 300, "mem_size_mib": 128}"#);
    assert!(m.contains("invalid value: integer `300`"), "{m}");
    let m = msg("PUT", "/boot-source", r#"{"kernel_image_path": "/k", "kernel": "/k"}"#);
    assert!(m.contains("unknown field `kernel`"), "{m}");
    let m = msg("PUT", "/boot-source", r#"[]"#);
    assert!(m.contains("not a valid BootSource"), "{m}");
    let m = msg("PATCH", "/drives/d", r#"{"drive_id": "d", "is_read_only": true}"#);
    assert!(
        m.contains("unknown field `is_read_only`") && m.contains("PartialDrive"),
        "{m}"
    );
    // serde quotes the offending value; a huge one is cut.
    let huge = "A".repeat(50_000);
    let m = msg(
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count": "{huge}", "mem_size_mib": 1}}"#),
    );
    assert!(m.contains("..."), "{m}");
}

// ---- methods and paths ----

#[test]
fn wrong_methods_on_known_paths() {
    for (method, path, takes) in [
        ("DELETE", "/boot-source", "/boot-source takes PUT."),
        ("GET", "/boot-source", "/boot-source takes PUT."),
        ("POST", "/actions", "/actions takes PUT."),
        ("GET", "/drives/rootfs", "/drives/{drive_id} takes PUT, PATCH."),
        (
            "GET",
            "/network-interfaces/eth0",
            "/network-interfaces/{iface_id} takes PUT.",
        ),
        ("PUT", "/", "/ takes GET."),
        ("PUT", "/vm", "/vm takes PATCH."),
        ("DELETE", "/machine-config", "/machine-config takes GET, PUT, PATCH."),
        ("PATCH", "/metrics", "/metrics takes GET, PUT."),
        ("HEAD", "/", "/ takes GET."),
        ("get", "/", "/ takes GET."),
    ] {
        let m = msg(method, path, "{}");
        assert_eq!(
            m,
            format!("Invalid request method and/or path: {method} {path}. {takes}"),
            "{method} {path}"
        );
    }
}

#[test]
fn unknown_paths() {
    for (method, path) in [
        ("GET", "/foo"),
        ("PUT", "/drives/a/b"),
        ("PUT", "/snapshot/foo"),
        ("PUT", "/snapshot"),
        ("GET", "/vm/config/x"),
        ("PUT", "/kvmkit"),
        ("PUT", "/kvmkit/start"),
        ("BREW", "/coffee"),
    ] {
        assert_eq!(
            msg(method, path, ""),
            format!("Invalid request method and/or path: {method} {path}."),
        );
    }
}

#[test]
fn malformed_paths_are_refused_clearly() {
    for (path, why) in [
        ("/machine-config?x=1", "query strings"),
        ("/?", "query strings"),
        ("/vm#frag", "query strings"),
        ("/drives/root%66s", "percent-encoding"),
        ("/machine-config/", "ends with '/'"),
        ("/drives/rootfs/", "ends with '/'"),
        ("//", "empty segment"),
        ("//machine-config", "empty segment"),
        ("/drives//rootfs", "empty segment"),
        ("", "it is empty"),
        ("*", "must start with '/'"),
        ("machine-config", "must start with '/'"),
        ("/vm\nX-Injected: 1", "control character"),
        ("/a b", "space"),
    ] {
        let e = err("GET", path, "");
        assert!(matches!(e, RequestError::BadPath { .. }), "{path:?}: {e:?}");
        let m = msg("GET", path, "");
        assert!(
            m.starts_with("Invalid request path ") && m.contains(why),
            "{path:?}: {m}"
        );
    }
    // A huge path is quoted short.
    let path = format!("/{}", "z".repeat(1 << 20));
    let m = msg("GET", &path, "");
    assert!(m.len() < 300, "{}", m.len());
    let m = msg("GET", &format!("{path}/"), "");
    assert!(m.contains("ends with '/'") && m.len() < 400, "{m}");
}

#[test]
fn quote_cuts_and_escapes() {
    assert_eq!(quote("abc", 10), "abc");
    assert_eq!(quote("abcdef", 3), "abc...");
    assert_eq!(quote("a\nb\u{1b}", 10), "a\\nb\\u{1b}");
    assert_eq!(quote("\u{e9}\u{e9}\u{e9}", 2), "\u{e9}\u{e9}...");
}

#[test]
fn vsock_in_firecracker_shape() {
    assert_eq!(
        vmm(
            "PUT",
            "/vsock",
            r#"{"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/tmp/v.sock"}"#
        ),
        VmmAction::PutVsock(kvmkit_vmm::vmm_config::VsockDeviceConfig {
            vsock_id: Some("vsock0".into()),
            guest_cid: 3,
            uds_path: "/tmp/v.sock".into(),
        })
    );
    assert!(msg("PUT", "/vsock", r#"{"guest_cid": 3}"#).contains("uds_path"));
    assert!(msg("PUT", "/vsock", r#"{"guest_cid": 3, "uds_path": "/v", "port": 1}"#).contains("unknown field"));
    assert!(msg("GET", "/vsock", "").contains("/vsock takes PUT"));
}
