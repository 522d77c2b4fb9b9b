//! The policy matching and merge function, table-driven: which policy wins for which inbound,
//! caller and destination, including conflicting policies.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use strait_api::dataplane::DataplaneSpec;
use strait_api::merge::effective_config;
use strait_api::{parse_documents, Resource, ResourceType, Spec};

const DP: &str = r#"
type: Dataplane
name: backend-1
mesh: default
spec:
  networking:
    address: 192.0.2.1
    inbound:
      - port: 8080
        tags: {strait.io/service: backend, version: v1, strait.io/protocol: http}
      - port: 9090
        tags: {strait.io/service: backend-admin}
    outbound:
      - port: 10001
        tags: {strait.io/service: db}
      - port: 10002
        tags: {strait.io/service: cache}
"#;

fn dataplane() -> DataplaneSpec {
    match Resource::from_str_any(DP).unwrap().spec {
        Spec::Dataplane(d) => d,
        other => panic!("{other:?}"),
    }
}

fn policies(yaml: &str) -> Vec<Resource> {
    parse_documents(yaml).into_iter().map(|r| r.unwrap_or_else(|e| panic!("{e}"))).collect()
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn mtp(name: &str, top: &str, from: &str, action: &str) -> String {
    format!("type: MeshTrafficPermission\nname: {name}\nmesh: default\nspec:\n  targetRef: {top}\n  from:\n    - targetRef: {from}\n      default: {{action: {action}}}\n---\n")
}

/// The action a caller with `caller` tags gets on inbound `port`.
fn action(policies: &[Resource], port: u16, caller: &[(&str, &str)]) -> Option<String> {
    let cfg = effective_config("backend-1", &dataplane(), policies, &[]);
    let inbound = cfg.inbounds.iter().find(|i| i.port == port).unwrap();
    let rules = inbound.from.get(&ResourceType::MeshTrafficPermission)?;
    let rule = rules.iter().find(|r| r.applies_to(&tags(caller)))?;
    rule.conf["action"].as_str().map(str::to_string)
}

#[test]
fn traffic_permission_precedence() {
    static WEB: [(&str, &str); 2] = [("strait.io/service", "web"), ("version", "v2")];
    static OTHER: [(&str, &str); 1] = [("strait.io/service", "other")];
    struct Case {
        what: &'static str,
        yaml: String,
        port: u16,
        caller: &'static [(&'static str, &'static str)],
        expected: Option<&'static str>,
    }
    let cases = vec![
        Case { what: "no policy", yaml: String::new(), port: 8080, caller: &WEB, expected: None },
        Case { what: "mesh-wide allow", yaml: mtp("allow-all", "{kind: Mesh}", "{kind: Mesh}", "Allow"), port: 8080, caller: &WEB, expected: Some("Allow") },
        Case {
            what: "a service-targeted deny beats a mesh-wide allow",
            yaml: mtp("allow-all", "{kind: Mesh}", "{kind: Mesh}", "Allow") + &mtp("deny-web", "{kind: MeshService, name: backend}", "{kind: MeshService, name: web}", "Deny"),
            port: 8080,
            caller: &WEB,
            expected: Some("Deny"),
        },
        Case {
            what: "...but only for the caller it names",
            yaml: mtp("allow-all", "{kind: Mesh}", "{kind: Mesh}", "Allow") + &mtp("deny-web", "{kind: MeshService, name: backend}", "{kind: MeshService, name: web}", "Deny"),
            port: 8080,
            caller: &OTHER,
            expected: Some("Allow"),
        },
        Case {
            what: "...and only for the inbound of the targeted service",
            yaml: mtp("allow-all", "{kind: Mesh}", "{kind: Mesh}", "Allow") + &mtp("deny-web", "{kind: MeshService, name: backend}", "{kind: MeshService, name: web}", "Deny"),
            port: 9090,
            caller: &WEB,
            expected: Some("Allow"),
        },
        Case {
            what: "a Dataplane-targeted policy beats a service-targeted one",
            yaml: mtp("deny", "{kind: MeshService, name: backend}", "{kind: Mesh}", "Deny") + &mtp("allow-this-one", "{kind: Dataplane, name: backend-1}", "{kind: Mesh}", "Allow"),
            port: 8080,
            caller: &WEB,
            expected: Some("Allow"),
        },
        Case {
            what: "same specificity: the later name wins",
            yaml: mtp("b-deny", "{kind: Mesh}", "{kind: Mesh}", "Deny") + &mtp("a-allow", "{kind: Mesh}", "{kind: Mesh}", "Allow"),
            port: 8080,
            caller: &WEB,
            expected: Some("Deny"),
        },
        Case {
            what: "same specificity, names the other way round",
            yaml: mtp("a-deny", "{kind: Mesh}", "{kind: Mesh}", "Deny") + &mtp("b-allow", "{kind: Mesh}", "{kind: Mesh}", "Allow"),
            port: 8080,
            caller: &WEB,
            expected: Some("Allow"),
        },
        Case {
            what: "within one policy the more specific caller item wins",
            yaml: "type: MeshTrafficPermission\nname: p\nmesh: default\nspec:\n  from:\n    - targetRef: {kind: MeshService, name: web}\n      default: {action: Deny}\n    - targetRef: {kind: Mesh}\n      default: {action: Allow}\n".into(),
            port: 8080,
            caller: &WEB,
            expected: Some("Deny"),
        },
        Case {
            what: "overlapping subset and service selectors: the caller carrying both gets the merge",
            yaml: mtp("by-version", "{kind: Mesh}", "{kind: MeshSubset, tags: {version: v2}}", "Deny") + &mtp("by-service", "{kind: Mesh}", "{kind: MeshService, name: web}", "Allow"),
            port: 8080,
            caller: &WEB,
            expected: Some("Deny"),
        },
        Case {
            what: "a subset that does not select this proxy is ignored",
            yaml: mtp("v2-only", "{kind: MeshSubset, tags: {version: v2}}", "{kind: Mesh}", "Deny") + &mtp("allow", "{kind: Mesh}", "{kind: Mesh}", "Allow"),
            port: 8080,
            caller: &WEB,
            expected: Some("Allow"),
        },
        Case {
            what: "a subset that selects this proxy beats the mesh",
            yaml: mtp("v1-only", "{kind: MeshSubset, tags: {version: v1}}", "{kind: Mesh}", "Deny") + &mtp("allow", "{kind: Mesh}", "{kind: Mesh}", "Allow"),
            port: 8080,
            caller: &WEB,
            expected: Some("Deny"),
        },
        Case {
            what: "a policy for another Dataplane is ignored",
            yaml: mtp("other-dp", "{kind: Dataplane, name: backend-2}", "{kind: Mesh}", "Deny"),
            port: 8080,
            caller: &WEB,
            expected: None,
        },
    ];
    let mut failures = Vec::new();
    for c in cases {
        let got = action(&policies(&c.yaml), c.port, c.caller);
        if got.as_deref() != c.expected {
            failures.push(format!("{}: expected {:?}, got {:?}", c.what, c.expected, got));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn timeout(name: &str, top: &str, to: &str, conf: &str) -> String {
    format!("type: MeshTimeout\nname: {name}\nmesh: default\nspec:\n  targetRef: {top}\n  to:\n    - targetRef: {to}\n      default: {conf}\n---\n")
}

fn outbound_conf(policies: &[Resource], service: &str, ty: ResourceType) -> Value {
    let cfg = effective_config("backend-1", &dataplane(), policies, &["search"]);
    let out = cfg.outbounds.iter().find(|o| o.service == service).unwrap_or_else(|| panic!("no outbound {service}"));
    out.to.get(&ty).map(|c| c.conf.clone()).unwrap_or(Value::Null)
}

#[test]
fn outbound_confs_merge_field_by_field() {
    struct Case {
        what: &'static str,
        yaml: String,
        service: &'static str,
        expected: Value,
    }
    let base = timeout("base", "{kind: Mesh}", "{kind: Mesh}", "{connectionTimeout: 5s, idleTimeout: 1h, http: {requestTimeout: 15s}}");
    let cases = vec![
        Case {
            what: "mesh-wide applies to every destination",
            yaml: base.clone(),
            service: "cache",
            expected: json!({"connectionTimeout": "5s", "idleTimeout": "1h", "http": {"requestTimeout": "15s"}}),
        },
        Case {
            what: "a destination item overrides only the fields it sets",
            yaml: base.clone() + &timeout("db", "{kind: Mesh}", "{kind: MeshService, name: db}", "{http: {requestTimeout: 1m}}"),
            service: "db",
            expected: json!({"connectionTimeout": "5s", "idleTimeout": "1h", "http": {"requestTimeout": "1m"}}),
        },
        Case {
            what: "...and leaves other destinations alone",
            yaml: base.clone() + &timeout("db", "{kind: Mesh}", "{kind: MeshService, name: db}", "{http: {requestTimeout: 1m}}"),
            service: "cache",
            expected: json!({"connectionTimeout": "5s", "idleTimeout": "1h", "http": {"requestTimeout": "15s"}}),
        },
        Case {
            what: "a policy with a more specific top-level targetRef wins over a mesh-wide one",
            yaml: timeout("z-mesh", "{kind: Mesh}", "{kind: Mesh}", "{idleTimeout: 1h}")
                + &timeout("a-svc", "{kind: MeshService, name: backend}", "{kind: Mesh}", "{idleTimeout: 2h}"),
            service: "db",
            expected: json!({"idleTimeout": "2h"}),
        },
        Case {
            what: "a mesh's default merges before the user's policies, whatever their names",
            yaml: timeout("a-user", "{kind: Mesh}", "{kind: MeshService, name: db}", "{idleTimeout: 2h}")
                + &timeout("z-default", "{kind: Mesh}", "{kind: Mesh}", "{idleTimeout: 1h, connectionTimeout: 5s}")
                    .replace("mesh: default\n", "mesh: default\nlabels: {strait.io/origin: default}\n"),
            service: "db",
            expected: json!({"idleTimeout": "2h", "connectionTimeout": "5s"}),
        },
        Case {
            what: "...while between user policies the later name wins",
            yaml: timeout("a-user", "{kind: Mesh}", "{kind: MeshService, name: db}", "{idleTimeout: 2h}")
                + &timeout("z-user", "{kind: Mesh}", "{kind: Mesh}", "{idleTimeout: 1h, connectionTimeout: 5s}"),
            service: "db",
            expected: json!({"idleTimeout": "1h", "connectionTimeout": "5s"}),
        },
        Case {
            what: "a policy targeting a service this proxy does not serve is ignored",
            yaml: timeout("other", "{kind: MeshService, name: frontend}", "{kind: Mesh}", "{idleTimeout: 9h}"),
            service: "db",
            expected: Value::Null,
        },
        Case {
            what: "destinations from transparent proxying get confs too",
            yaml: base.clone(),
            service: "search",
            expected: json!({"connectionTimeout": "5s", "idleTimeout": "1h", "http": {"requestTimeout": "15s"}}),
        },
    ];
    let mut failures = Vec::new();
    for c in cases {
        let got = outbound_conf(&policies(&c.yaml), c.service, ResourceType::MeshTimeout);
        if got != c.expected {
            failures.push(format!("{}: expected {}, got {}", c.what, c.expected, got));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn lists_replace_rather_than_append() {
    let yaml = "type: MeshAccessLog\nname: a\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: Mesh}\n      default: {backends: [{file: {path: /a}}, {file: {path: /b}}]}\n---\ntype: MeshAccessLog\nname: b\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: MeshService, name: db}\n      default: {backends: [{file: {path: /c}}]}\n";
    let got = outbound_conf(&policies(yaml), "db", ResourceType::MeshAccessLog);
    assert_eq!(got, json!({"backends": [{"file": {"path": "/c"}}]}));
}

#[test]
fn typed_confs_and_origins() {
    let yaml = timeout("base", "{kind: Mesh}", "{kind: Mesh}", "{idleTimeout: 1h}")
        + &timeout("db", "{kind: Mesh}", "{kind: MeshService, name: db}", "{connectionTimeout: 2s}");
    let cfg = effective_config("backend-1", &dataplane(), &policies(&yaml), &[]);
    let db = cfg.outbounds.iter().find(|o| o.service == "db").unwrap();
    let conf: strait_api::policies::timeout::TimeoutConf = db.conf(ResourceType::MeshTimeout).unwrap();
    assert_eq!(conf.idle_timeout.unwrap().to_string(), "1h");
    assert_eq!(conf.connection_timeout.unwrap().to_string(), "2s");
    assert_eq!(db.to[&ResourceType::MeshTimeout].origin, vec!["base", "db"]);
}

#[test]
fn http_routes_merge_equal_matches_and_order_by_specificity() {
    let yaml = r#"
type: MeshHTTPRoute
name: a-general
mesh: default
spec:
  to:
    - targetRef: {kind: MeshService, name: db}
      rules:
        - default: {backendRefs: [{kind: MeshService, name: db}]}
        - matches: [{path: {type: PathPrefix, value: /api}}]
          default: {backendRefs: [{kind: MeshService, name: db, tags: {version: v1}}]}
---
type: MeshHTTPRoute
name: b-override
mesh: default
spec:
  targetRef: {kind: MeshService, name: backend}
  to:
    - targetRef: {kind: MeshService, name: db}
      rules:
        - matches: [{path: {type: PathPrefix, value: /api}}]
          default: {backendRefs: [{kind: MeshService, name: db, tags: {version: v2}}]}
        - matches: [{path: {type: Exact, value: /api/health}}]
          default: {filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: y}]}}]}
"#;
    let cfg = effective_config("backend-1", &dataplane(), &policies(yaml), &[]);
    let db = cfg.outbounds.iter().find(|o| o.service == "db").unwrap();
    let shape: Vec<(String, Vec<String>)> = db
        .http_routes
        .iter()
        .map(|r| (r.matches.first().and_then(|m| m.path.as_ref()).map(|p| p.value.clone()).unwrap_or_default(), r.origin.clone()))
        .collect();
    assert_eq!(
        shape,
        vec![
            ("/api/health".to_string(), vec!["b-override".to_string()]),
            ("/api".to_string(), vec!["a-general".to_string(), "b-override".to_string()]),
            (String::new(), vec!["a-general".to_string()]),
        ]
    );
    assert_eq!(db.http_routes[1].conf["backendRefs"][0]["tags"]["version"], "v2", "the more specific policy wins the conflicting rule");
    assert!(db.http_routes.iter().all(|r| r.timeout.is_none()), "no MeshTimeout names these routes");

    // A MeshTimeout on route b-override applies to the rules it contributed to, and to
    // nothing else (neither the destination as a whole nor a-general's own rule).
    let on_route = r#"
---
type: MeshTimeout
name: slow-api
mesh: default
spec:
  targetRef: {kind: MeshHTTPRoute, name: b-override}
  to:
    - targetRef: {kind: Mesh}
      default: {http: {requestTimeout: 30s}}
---
type: MeshTimeout
name: other-route
mesh: default
spec:
  targetRef: {kind: MeshHTTPRoute, name: elsewhere}
  to:
    - targetRef: {kind: Mesh}
      default: {http: {requestTimeout: 1s}}
"#;
    let cfg = effective_config("backend-1", &dataplane(), &policies(&format!("{yaml}{on_route}")), &[]);
    let db = cfg.outbounds.iter().find(|o| o.service == "db").unwrap();
    let timeouts: Vec<Option<(String, Vec<String>)>> = db
        .http_routes
        .iter()
        .map(|r| r.timeout.as_ref().map(|t| (t.conf["http"]["requestTimeout"].as_str().unwrap().to_string(), t.origin.clone())))
        .collect();
    assert_eq!(
        timeouts,
        vec![Some(("30s".into(), vec!["slow-api".into()])), Some(("30s".into(), vec!["slow-api".into()])), None],
        "the rules of b-override, not a-general's own"
    );
    assert!(!db.to.contains_key(&ResourceType::MeshTimeout), "a MeshTimeout on a route is not the destination's");
    let cache = cfg.outbounds.iter().find(|o| o.service == "cache").unwrap();
    assert!(cache.http_routes.is_empty());
}

#[test]
fn proxy_wide_policies_and_tcp_routes() {
    let yaml = r#"
type: MeshTrace
name: a-mesh
mesh: default
spec:
  default: {sampling: {overall: 10, client: 100}}
---
type: MeshTrace
name: z-backend
mesh: default
spec:
  targetRef: {kind: MeshService, name: backend}
  default: {sampling: {overall: 50}}
---
type: MeshTCPRoute
name: db
mesh: default
spec:
  to:
    - targetRef: {kind: MeshService, name: db}
      rules:
        - default: {backendRefs: [{kind: MeshService, name: db-primary}]}
"#;
    let cfg = effective_config("backend-1", &dataplane(), &policies(yaml), &[]);
    assert_eq!(cfg.proxy[&ResourceType::MeshTrace].conf, json!({"sampling": {"overall": 50.0, "client": 100.0}}));
    let db = cfg.outbounds.iter().find(|o| o.service == "db").unwrap();
    assert_eq!(db.tcp_route.as_ref().unwrap().conf["backendRefs"][0]["name"], "db-primary");
}

/// `straitctl inspect dataplane --policies`: each effective field names the policy that set
/// it, inbound rules by caller included; a plain merge records nothing.
#[test]
fn explained_merges_name_the_policy_behind_each_field() {
    let yaml = timeout("base", "{kind: Mesh}", "{kind: Mesh}", "{connectionTimeout: 5s, idleTimeout: 1h, http: {requestTimeout: 15s}}")
        + &timeout("db", "{kind: Mesh}", "{kind: MeshService, name: db}", "{http: {requestTimeout: 1m}}")
        + &mtp("allow-all", "{kind: Mesh}", "{kind: Mesh}", "Allow")
        + &mtp("deny-web", "{kind: MeshService, name: backend}", "{kind: MeshService, name: web}", "Deny");
    let all = policies(&yaml);
    let explained = strait_api::merge::explained("backend-1", &dataplane(), &all, &[]);
    let db = explained.outbounds.iter().find(|o| o.service == "db").expect("db");
    let timeout = &db.to[&ResourceType::MeshTimeout];
    assert_eq!(timeout.origin, ["base", "db"]);
    let fields: Vec<(&str, &str)> = timeout.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(fields, [("/connectionTimeout", "base"), ("/http/requestTimeout", "db"), ("/idleTimeout", "base")]);
    let rules = &explained.inbounds[0].from[&ResourceType::MeshTrafficPermission];
    let web = rules.iter().find(|r| r.matches.get("strait.io/service").map(String::as_str) == Some("web")).expect("a rule for web");
    assert_eq!(web.fields.get("/action").map(String::as_str), Some("deny-web"));
    let everyone = rules.iter().find(|r| r.matches.is_empty()).expect("a rule for every caller");
    assert_eq!(everyone.fields.get("/action").map(String::as_str), Some("allow-all"));

    let plain = effective_config("backend-1", &dataplane(), &all, &[]);
    assert!(plain.outbounds.iter().all(|o| o.to.values().all(|c| c.fields.is_empty())), "only explaining records fields");
}
