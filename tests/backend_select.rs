//! `[inference] backend / adapter / fallback_to_tract` and the backend switch, in both builds
//! (with and without `--features wgpu`).

mod common;

use vigil::backbone::{
    AdapterChoice, AnyBackbone, Backbone, BackboneError, BackendKind, BackendOptions,
};
use vigil::config::Config;

const SHIPPED: &str = include_str!("../config/vigil.toml");

#[test]
fn the_shipped_config_documents_the_backend_keys_with_their_defaults() {
    let cfg = Config::from_toml(SHIPPED).expect("parses");
    assert_eq!(cfg.inference.backend, BackendKind::Tract);
    assert_eq!(cfg.inference.adapter, AdapterChoice::Auto);
    assert!(cfg.inference.fallback_to_tract);
    for key in [
        "backend = \"tract\"",
        "adapter = \"auto\"",
        "fallback_to_tract = true",
    ] {
        assert!(SHIPPED.contains(key), "config/vigil.toml lacks {key}");
    }
    let cpu = SHIPPED.replace("adapter = \"auto\"", "adapter = \"cpu-fallback\"");
    assert_eq!(
        Config::from_toml(&cpu)
            .expect("cpu-fallback")
            .inference
            .adapter,
        AdapterChoice::CpuFallback
    );
    let bad = SHIPPED.replace("backend = \"tract\"", "backend = \"cuda\"");
    let e = Config::from_toml(&bad).expect_err("unknown backend");
    assert!(e.to_string().contains("cuda"), "{e}");
}

#[test]
fn backend_wgpu_needs_the_feature() {
    let wgpu = SHIPPED.replace("backend = \"tract\"", "backend = \"wgpu\"");
    let r = Config::from_toml(&wgpu);
    if cfg!(feature = "wgpu") {
        assert_eq!(r.expect("wgpu build").inference.backend, BackendKind::Wgpu);
    } else {
        let e = r.expect_err("built without wgpu");
        assert!(e.to_string().contains("--features wgpu"), "{e}");
        let err = AnyBackbone::load(
            &BackendOptions {
                kind: BackendKind::Wgpu,
                adapter: AdapterChoice::Auto,
                fallback_to_tract: true,
            },
            &common::repo_path("models/efficientnet_lite0_pooled.onnx"),
            1,
            None,
        )
        .err()
        .expect("no wgpu in this build");
        assert!(matches!(err, BackboneError::Unsupported { .. }), "{err}");
    }
}

#[test]
fn the_default_backend_is_tract_and_forks() {
    let bb = AnyBackbone::load(
        &BackendOptions::default(),
        &common::repo_path("models/efficientnet_lite0_pooled.onnx"),
        1,
        None,
    )
    .expect("load");
    assert_eq!(bb.kind(), BackendKind::Tract);
    let fork = bb.fork().expect("fork");
    assert_eq!(fork.info(), bb.info());
}
