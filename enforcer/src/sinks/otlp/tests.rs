use super::*;

fn setup_error(endpoint: &str) -> OtlpError {
    match OtlpSink::new(endpoint, Product::default()) {
        Ok(sink) => panic!("{endpoint} accepted: {sink:?}"),
        Err(SinkError::Otlp {
            endpoint: reported,
            source,
        }) => {
            assert_eq!(reported, endpoint);
            source
        }
        Err(other) => panic!("{endpoint}: unexpected error {other:?}"),
    }
}

#[test]
fn http_and_https_endpoints_are_accepted_without_connecting() {
    for endpoint in [
        "http://127.0.0.1:4317",
        "http://[::1]:4317",
        "https://collector.example:4317",
    ] {
        let sink = OtlpSink::new(endpoint, Product::default())
            .unwrap_or_else(|error| panic!("{endpoint}: {error:?}"));
        assert!(sink.client.is_none(), "{endpoint}: connected eagerly");
    }
}

#[test]
fn other_schemes_are_refused() {
    for (endpoint, scheme) in [
        ("grpc://collector:4317", Some("grpc")),
        ("ftp://collector:4317", Some("ftp")),
        ("collector:4317", None),
    ] {
        match setup_error(endpoint) {
            OtlpError::Scheme { scheme: found } => assert_eq!(found.as_deref(), scheme),
            other => panic!("{endpoint}: {other:?}"),
        }
    }
}

#[test]
fn a_uri_without_a_scheme_or_a_host_is_refused() {
    assert!(matches!(
        setup_error("/v1/logs"),
        OtlpError::Scheme { scheme: None }
    ));
    assert!(matches!(setup_error("not a uri"), OtlpError::Uri(_)));
}
