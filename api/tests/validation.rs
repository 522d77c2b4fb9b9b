//! Parsing and validation of resources from YAML, table-driven: each bad input must be refused
//! with the full path of the offending field.

use strait_api::{parse_documents, Resource, ResourceType, Spec};

fn err_of(yaml: &str) -> String {
    match Resource::from_str_any(yaml) {
        Ok(r) => panic!("expected an error, parsed {r:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_resources_are_refused_naming_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n    - targetRef: {kind: Mesh}\n      default:\n        http: {requestTimeout: 5 parsecs}\n",
            "spec.to[0].default.http.requestTimeout: invalid duration \"5 parsecs\"",
        ),
        (
            "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: Mesh}\n      default: {idleTimeout: 1s, colour: blue}\n",
            "spec.to[0].default.colour: unknown field `colour`, expected one of `connectionTimeout`",
        ),
        ("type: MeshRetry\nname: r\nmesh: default\nspec:\n  from:\n    - targetRef: {kind: Mesh}\n      default: {tcp: {maxConnectAttempt: 2}}\n", "spec.from: this policy type has no `from` section"),
        ("type: MeshTrafficPermission\nname: p\nmesh: default\nspec:\n  from:\n    - targetRef: {kind: Mesh}\n      default: {action: Maybe}\n", "spec.from[0].default.action: unknown variant `Maybe`"),
        ("type: MeshTrafficPermission\nname: p\nmesh: default\nspec:\n  targetRef: {kind: MeshService}\n  from:\n    - targetRef: {kind: Mesh}\n      default: {action: Allow}\n", "spec.targetRef.name: kind MeshService needs a name"),
        ("type: MeshTrafficPermission\nname: p\nmesh: default\nspec:\n  from:\n    - targetRef: {kind: Dataplane, name: x}\n      default: {action: Allow}\n", "spec.from[0].targetRef.kind: Dataplane is not allowed here"),
        ("type: MeshTrafficPermission\nname: Bad_Name\nmesh: default\nspec:\n  from:\n    - targetRef: {kind: Mesh}\n      default: {action: Allow}\n", "name: \"Bad_Name\" is not a valid name"),
        ("type: MeshTrafficPermission\nname: p\nspec:\n  from:\n    - targetRef: {kind: Mesh}\n      default: {action: Allow}\n", "mesh: required for MeshTrafficPermission"),
        ("type: Mesh\nname: m\nmesh: other\n", "mesh: not allowed for Mesh"),
        ("type: Meshy\nname: m\n", "type: unknown resource type \"Meshy\""),
        ("name: m\n", "type: required"),
        ("type: Mesh\nname: m\ncolour: red\n", "colour: unknown field"),
        ("type: MeshTimeout\nname: t\nmesh: default\n", "spec: required"),
        (
            "type: MeshAccessLog\nname: l\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: Mesh}\n      default: {backends: [{file: {path: /dev/stdout, format: {plain: \"%METHOD% %STATUS%\"}}}]}\n",
            "spec.to[0].default.backends[0].file.format.plain: unknown placeholder %STATUS%",
        ),
        (
            "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: r}\n  to:\n    - targetRef: {kind: MeshService, name: api}\n      default: {http: {requestTimeout: 1s}}\n",
            "spec.to[0].targetRef.kind: must be Mesh: the route names its destinations",
        ),
        (
            "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: r}\n  to:\n    - targetRef: {kind: Mesh}\n      default: {idleTimeout: 1s}\n",
            "spec.to[0].default.idleTimeout: is a limit of connections, which the routes of a destination share",
        ),
        (
            "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: r}\n  from:\n    - targetRef: {kind: Mesh}\n      default: {http: {requestTimeout: 1s}}\n",
            "spec.from: a policy on a route applies to the requests the route sends: use `to`",
        ),
        (
            "type: MeshRetry\nname: r\nmesh: default\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: r}\n  to:\n    - targetRef: {kind: Mesh}\n      default: {tcp: {maxConnectAttempt: 2}}\n",
            "spec.targetRef.kind: MeshHTTPRoute is not allowed here",
        ),
        ("type: MeshTimeout\nname: t\nmesh: default\nspec: {targetRef: {kind: Mesh}}\n", "spec: needs at least one item in `from` or `to`"),
        ("type: Mesh\nname: m\nspec: {mtls: {certificateLifetime: 1s}}\n", "spec.mtls.certificateLifetime: 1s is too short"),
        (
            "type: MeshHTTPRoute\nname: r\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: MeshService, name: api}\n      rules:\n        - matches: [{path: {type: PathPrefix, value: v1}}]\n          default: {}\n",
            "spec.to[0].rules[0].matches[0].path.value: \"v1\" must start with '/'",
        ),
        (
            "type: MeshHTTPRoute\nname: r\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: MeshService, name: api}\n      rules:\n        - default:\n            backendRefs: [{kind: MeshService, name: api, weight: 0}]\n",
            "spec.to[0].rules[0].default.backendRefs: at least one backend needs a weight above 0",
        ),
        (
            "type: MeshHTTPRoute\nname: r\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: MeshService, name: api}\n      rules:\n        - default:\n            filters: [{type: RequestRedirect, urlRewrite: {hostname: x}}]\n",
            "spec.to[0].rules[0].default.filters[0].requestRedirect: required when type is RequestRedirect",
        ),
        (
            "type: MeshLoadBalancingStrategy\nname: l\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: Mesh}\n      default:\n        loadBalancer: {type: RoundRobin, leastRequest: {choiceCount: 3}}\n",
            "spec.to[0].default.loadBalancer.leastRequest: only allowed when type is LeastRequest",
        ),
        (
            "type: MeshFaultInjection\nname: f\nmesh: default\nspec:\n  from:\n    - targetRef: {kind: Mesh}\n      default:\n        http: [{abort: {httpStatus: 503, percentage: 150}}]\n",
            "spec.from[0].default.http[0].abort.percentage: 150 is out of range",
        ),
        (
            "type: MeshRetry\nname: r\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: Mesh}\n      default:\n        http: {retryOn: [5xx, Sometimes]}\n",
            "spec.to[0].default.http.retryOn[1]: unknown condition \"Sometimes\"",
        ),
        (
            "type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 10.0.0.1\n    inbound:\n      - port: 8080\n        tags: {version: v1}\n",
            "spec.networking.inbound[0].tags: needs the strait.io/service tag",
        ),
        (
            "type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 10.0.0.1\n    inbound:\n      - port: 70000\n        tags: {strait.io/service: web}\n",
            "spec.networking.inbound[0].port: invalid value: integer `70000`",
        ),
        (
            "type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 10.0.0.1\n    inbound:\n      - port: 80\n        tags: {strait.io/service: web, strait.io/protocol: smtp}\n",
            "spec.networking.inbound[0].tags[\"strait.io/protocol\"]: \"smtp\" is not a protocol",
        ),
        ("type: MeshTrafficPermission\nname: p\nmesh: default\nlabels: {\"bad key!\": x}\nspec:\n  from:\n    - targetRef: {kind: Mesh}\n      default: {action: Allow}\n", "labels[\"bad key!\"]: key \"bad key!\" is invalid"),
        ("type: Zone\nname: zone.one\n", "name: \"zone.one\" is not a valid name"),
        ("[1, 2]", "a resource must be an object"),
    ];
    let mut failures = Vec::new();
    for (yaml, expected) in cases {
        let err = err_of(yaml);
        if !err.contains(expected) {
            failures.push(format!("input:\n{yaml}\nexpected to contain: {expected}\ngot: {err}\n"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn least_request_needs_no_settings() {
    let yaml = "type: MeshLoadBalancingStrategy\nname: l\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: Mesh}\n      default:\n        loadBalancer: {type: LeastRequest}\n";
    assert!(Resource::from_str_any(yaml).is_ok(), "LeastRequest without leastRequest takes the default of two choices");
}

#[test]
fn several_errors_are_reported_together() {
    let err = err_of("type: MeshTrafficPermission\nname: Bad\nmesh: Bad\nspec:\n  targetRef: {kind: MeshService}\n  from:\n    - targetRef: {kind: Mesh}\n      default: {action: Allow}\n");
    for part in ["name: \"Bad\"", "mesh: \"Bad\"", "spec.targetRef.name"] {
        assert!(err.contains(part), "{part} missing in {err}");
    }
}

#[test]
fn every_type_round_trips_through_json_and_yaml() {
    let docs = [include_str!("../../deploy/examples/all-types.yaml"), include_str!("../../deploy/examples/dataplane.yaml")];
    let parsed: Vec<Resource> = docs.iter().flat_map(|d| parse_documents(d)).map(|r| r.unwrap_or_else(|e| panic!("{e}"))).collect();
    let types: std::collections::BTreeSet<ResourceType> = parsed.iter().map(|r| r.kind).collect();
    assert_eq!(types.len(), ResourceType::ALL.len(), "the example files cover every type");
    for r in parsed {
        let json = serde_json::to_string(&r).unwrap();
        let back: Resource = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{}: {e}\n{json}", r.name));
        assert_eq!(back, r);
        let yaml = serde_yaml::to_string(&r).unwrap();
        assert_eq!(Resource::from_str_any(&yaml).unwrap(), r);
    }
}

#[test]
fn durations_are_stored_in_canonical_form() {
    let r = Resource::from_str_any(
        "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: Mesh}\n      default: {idleTimeout: 90s}\n",
    )
    .unwrap();
    let json = r.to_value();
    assert_eq!(json["spec"]["to"][0]["default"]["idleTimeout"], "1m30s");
    assert_eq!(json["spec"]["targetRef"]["kind"], "Mesh", "the default targetRef is written out");
}

#[test]
fn multi_document_errors_name_the_document() {
    let docs = "type: Mesh\nname: a\n---\n---\ntype: MeshTrafficPermission\nname: p\nmesh: a\nspec: {from: [{targetRef: {kind: Mesh}, default: {action: Nope}}]}\n";
    let results = parse_documents(docs);
    assert_eq!(results.len(), 2, "the empty document is skipped");
    assert!(results[0].is_ok());
    let err = results[1].as_ref().unwrap_err().to_string();
    assert!(err.starts_with("document 3 (meshtrafficpermission/p): spec.from[0].default.action"), "{err}");
}

#[test]
fn yaml_syntax_errors_are_reported() {
    let results = parse_documents("type: Mesh\nname: [unclosed\n");
    let err = results[0].as_ref().unwrap_err().to_string();
    assert!(err.starts_with("document 1: not valid YAML"), "{err}");
}

#[test]
fn lookup_accepts_names_plurals_and_aliases() {
    assert_eq!(ResourceType::lookup("mtp"), Some(ResourceType::MeshTrafficPermission));
    assert_eq!(ResourceType::lookup("MeshTrafficPermission"), Some(ResourceType::MeshTrafficPermission));
    assert_eq!(ResourceType::lookup("meshtrafficpermissions"), Some(ResourceType::MeshTrafficPermission));
    assert_eq!(ResourceType::lookup("meshhttproute"), Some(ResourceType::MeshHTTPRoute));
    assert_eq!(ResourceType::lookup("nothing"), None);
    match Resource::from_str_any("type: Mesh\nname: m\n").unwrap().spec {
        Spec::Mesh(m) => assert_eq!(m.certificate_lifetime().to_string(), "24h"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sidecars_dataplane_file_is_read_as_any_resource_and_refuses_other_types() {
    let yaml = "type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 10.0.0.1\n    inbound:\n      - port: 8080\n        servicePort: 80\n        tags: {strait.io/service: web}\n";
    let parsed = Resource::dataplane_from_str(yaml).unwrap();
    assert_eq!(parsed, Resource::from_str_any(yaml).unwrap(), "the same resource as the general parser's");
    assert_eq!(parsed.kind, ResourceType::Dataplane);
    let bad = yaml.replace("port: 8080", "port: eighty");
    let (general, own) = (err_of(&bad), Resource::dataplane_from_str(&bad).unwrap_err().to_string());
    assert_eq!(own, general, "the same message, naming the field");
    assert!(own.contains("spec.networking.inbound[0].port"), "{own}");
    let other =
        "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: Mesh}\n      default: {idleTimeout: 90s}\n";
    let refused = Resource::dataplane_from_str(other).unwrap_err().to_string();
    assert!(refused.contains("type: expected Dataplane, got MeshTimeout"), "{refused}");
    let envelope = Resource::dataplane_from_str(&yaml.replace("name: web-1", "name: Web_1")).unwrap_err().to_string();
    assert!(envelope.contains("name"), "the envelope is validated too: {envelope}");
}

#[test]
fn a_resource_written_with_its_own_spec_alone_is_written_as_the_whole_resource_is() {
    let yaml = "type: Dataplane\nname: web-1\nmesh: default\nlabels: {team: shop}\nspec:\n  networking:\n    address: 10.0.0.1\n    inbound:\n      - port: 8080\n        tags: {strait.io/service: web}\n";
    let mut r = Resource::dataplane_from_str(yaml).unwrap();
    let mut bare = r.clone();
    bare.labels.clear();
    (r.version, r.creation_time, r.modification_time) =
        (Some(7), Some(time::OffsetDateTime::UNIX_EPOCH), Some(time::OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1)));
    r.status = Some(serde_json::json!({"connected": true}));
    for resource in [&r, &bare] {
        let Spec::Dataplane(spec) = &resource.spec else { panic!("a Dataplane") };
        let whole = serde_json::to_vec(resource).unwrap();
        assert_eq!(resource.to_json_with_spec(spec).unwrap(), whole, "{}", String::from_utf8_lossy(&whole));
    }
    let written: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(written["creationTime"], "1970-01-01T00:00:00Z");
    assert_eq!(written["labels"]["team"], "shop");
    assert!(serde_json::to_value(&bare).unwrap().get("labels").is_none(), "no labels, no field");
}
