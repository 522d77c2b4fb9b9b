use super::rules::{Action, Command};
use super::*;

fn rendered(commands: &[Command]) -> Vec<String> {
    commands.iter().map(Command::to_string).collect()
}

fn position(lines: &[String], wanted: &str) -> usize {
    lines.iter().position(|line| line == wanted).unwrap_or_else(|| panic!("`{wanted}` missing from:\n{}", lines.join("\n")))
}

#[test]
fn default_ipv4_rules_are_the_documented_ones() {
    let lines = rendered(&install_commands(&TransparentConfig::new(5678), Family::V4));
    let expected = [
        "iptables -w -t nat -N STRAIT_INBOUND",
        "iptables -w -t nat -N STRAIT_IN_REDIRECT",
        "iptables -w -t nat -N STRAIT_OUTBOUND",
        "iptables -w -t nat -N STRAIT_REDIRECT",
        "iptables -w -t nat -F STRAIT_INBOUND",
        "iptables -w -t nat -F STRAIT_IN_REDIRECT",
        "iptables -w -t nat -F STRAIT_OUTBOUND",
        "iptables -w -t nat -F STRAIT_REDIRECT",
        "iptables -w -t nat -A STRAIT_OUTBOUND -o lo ! -d 127.0.0.0/8 -m owner --uid-owner 5678 -j STRAIT_IN_REDIRECT",
        "iptables -w -t nat -A STRAIT_OUTBOUND -m owner --uid-owner 5678 -j RETURN",
        "iptables -w -t nat -A STRAIT_OUTBOUND -o lo -j RETURN",
        "iptables -w -t nat -A STRAIT_OUTBOUND -j STRAIT_REDIRECT",
        "iptables -w -t nat -A STRAIT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "iptables -w -t nat -A STRAIT_INBOUND -p tcp --dport 22 -j RETURN",
        "iptables -w -t nat -A STRAIT_INBOUND -p tcp --dport 5670 -j RETURN",
        "iptables -w -t nat -A STRAIT_INBOUND -p tcp -j STRAIT_IN_REDIRECT",
        "iptables -w -t nat -A STRAIT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "iptables -w -t nat -A OUTPUT -p tcp -j STRAIT_OUTBOUND",
        "iptables -w -t nat -A PREROUTING -p tcp -j STRAIT_INBOUND",
    ];
    assert_eq!(lines, expected);
}

/// One generated-rules case: settings, family, lines that must and must not appear.
struct Case {
    name: &'static str,
    family: Family,
    config: fn(&mut TransparentConfig),
    present: &'static [&'static str],
    absent: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "custom redirect ports",
        family: Family::V4,
        config: |c| {
            c.redirect_port_outbound = 25001;
            c.redirect_port_inbound = 25006;
        },
        present: &[
            "iptables -w -t nat -A STRAIT_REDIRECT -p tcp -j REDIRECT --to-ports 25001",
            "iptables -w -t nat -A STRAIT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 25006",
        ],
        absent: &["iptables -w -t nat -A STRAIT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"],
    },
    Case {
        name: "the proxy uid is excluded and hairpins to inbound",
        family: Family::V4,
        config: |c| c.proxy_uid = 1337,
        present: &[
            "iptables -w -t nat -A STRAIT_OUTBOUND -m owner --uid-owner 1337 -j RETURN",
            "iptables -w -t nat -A STRAIT_OUTBOUND -o lo ! -d 127.0.0.0/8 -m owner --uid-owner 1337 -j STRAIT_IN_REDIRECT",
        ],
        absent: &["iptables -w -t nat -A STRAIT_OUTBOUND -m owner --uid-owner 5678 -j RETURN"],
    },
    Case {
        name: "excluded outbound ports, each once",
        family: Family::V4,
        config: |c| c.exclude_outbound_ports = vec![5432, 6379, 5432],
        present: &[
            "iptables -w -t nat -A STRAIT_OUTBOUND -p tcp --dport 5432 -j RETURN",
            "iptables -w -t nat -A STRAIT_OUTBOUND -p tcp --dport 6379 -j RETURN",
        ],
        absent: &[],
    },
    Case {
        name: "IPv4 CIDRs go to iptables only",
        family: Family::V4,
        config: |c| c.exclude_outbound_cidrs = cidrs(&["10.0.0.0/8", "fd00::/8", "10.0.0.0/8"]),
        present: &["iptables -w -t nat -A STRAIT_OUTBOUND -d 10.0.0.0/8 -j RETURN"],
        absent: &["iptables -w -t nat -A STRAIT_OUTBOUND -d fd00::/8 -j RETURN"],
    },
    Case {
        name: "IPv6 CIDRs go to ip6tables only, with the IPv6 loopback",
        family: Family::V6,
        config: |c| c.exclude_outbound_cidrs = cidrs(&["10.0.0.0/8", "fd00::/8"]),
        present: &[
            "ip6tables -w -t nat -A STRAIT_OUTBOUND -d fd00::/8 -j RETURN",
            "ip6tables -w -t nat -A STRAIT_OUTBOUND -o lo ! -d ::1/128 -m owner --uid-owner 5678 -j STRAIT_IN_REDIRECT",
            "ip6tables -w -t nat -A OUTPUT -p tcp -j STRAIT_OUTBOUND",
        ],
        absent: &["ip6tables -w -t nat -A STRAIT_OUTBOUND -d 10.0.0.0/8 -j RETURN"],
    },
    Case {
        name: "excluded inbound ports replace the default",
        family: Family::V4,
        config: |c| c.exclude_inbound_ports = vec![9901, 7678],
        present: &[
            "iptables -w -t nat -A STRAIT_INBOUND -p tcp --dport 9901 -j RETURN",
            "iptables -w -t nat -A STRAIT_INBOUND -p tcp --dport 7678 -j RETURN",
        ],
        absent: &["iptables -w -t nat -A STRAIT_INBOUND -p tcp --dport 22 -j RETURN"],
    },
    Case {
        name: "without inbound redirection, inbound leftovers are removed",
        family: Family::V4,
        config: |c| c.redirect_inbound = false,
        present: &[
            "iptables -w -t nat -D PREROUTING -p tcp -j STRAIT_INBOUND",
            "iptables -w -t nat -X STRAIT_INBOUND",
            "iptables -w -t nat -X STRAIT_IN_REDIRECT",
            "iptables -w -t nat -A OUTPUT -p tcp -j STRAIT_OUTBOUND",
            "iptables -w -t nat -A STRAIT_OUTBOUND -m owner --uid-owner 5678 -j RETURN",
        ],
        absent: &[
            "iptables -w -t nat -N STRAIT_INBOUND",
            "iptables -w -t nat -A PREROUTING -p tcp -j STRAIT_INBOUND",
            "iptables -w -t nat -A STRAIT_OUTBOUND -o lo ! -d 127.0.0.0/8 -m owner --uid-owner 5678 -j STRAIT_IN_REDIRECT",
            "iptables -w -t nat -A STRAIT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        ],
    },
];

fn cidrs(values: &[&str]) -> Vec<Cidr> {
    values.iter().map(|value| value.parse().expect("test CIDR")).collect()
}

#[test]
fn generated_rules_follow_the_settings() {
    for case in CASES {
        let mut config = TransparentConfig::new(5678);
        (case.config)(&mut config);
        let lines = rendered(&install_commands(&config, case.family));
        for line in case.present {
            assert!(lines.iter().any(|l| l == line), "{}: `{line}` missing from:\n{}", case.name, lines.join("\n"));
        }
        for line in case.absent {
            assert!(!lines.iter().any(|l| l == line), "{}: `{line}` unexpected in:\n{}", case.name, lines.join("\n"));
        }
        let mut unique = lines.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), lines.len(), "{}: a command is repeated:\n{}", case.name, lines.join("\n"));
    }
}

#[test]
fn exclusions_come_before_the_uid_and_loopback_returns_which_come_before_the_redirect() {
    let mut config = TransparentConfig::new(5678);
    config.exclude_outbound_ports = vec![443];
    config.exclude_outbound_cidrs = cidrs(&["192.168.0.0/16"]);
    let lines = rendered(&install_commands(&config, Family::V4));
    let chain = "iptables -w -t nat";
    let order = [
        format!("{chain} -F STRAIT_OUTBOUND"),
        format!("{chain} -A STRAIT_OUTBOUND -p tcp --dport 443 -j RETURN"),
        format!("{chain} -A STRAIT_OUTBOUND -d 192.168.0.0/16 -j RETURN"),
        format!("{chain} -A STRAIT_OUTBOUND -o lo ! -d 127.0.0.0/8 -m owner --uid-owner 5678 -j STRAIT_IN_REDIRECT"),
        format!("{chain} -A STRAIT_OUTBOUND -m owner --uid-owner 5678 -j RETURN"),
        format!("{chain} -A STRAIT_OUTBOUND -o lo -j RETURN"),
        format!("{chain} -A STRAIT_OUTBOUND -j STRAIT_REDIRECT"),
        format!("{chain} -A OUTPUT -p tcp -j STRAIT_OUTBOUND"),
    ];
    let positions: Vec<usize> = order.iter().map(|line| position(&lines, line)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "out of order {positions:?}:\n{}", lines.join("\n"));
    // Chains exist before any rule refers to them.
    let last_new = position(&lines, &format!("{chain} -N STRAIT_REDIRECT"));
    assert!(last_new < positions[0]);
}

#[test]
fn uninstall_removes_the_jumps_then_empties_and_deletes_our_chains() {
    let lines = rendered(&uninstall_commands(Family::V6));
    let expected = [
        "ip6tables -w -t nat -D OUTPUT -p tcp -j STRAIT_OUTBOUND",
        "ip6tables -w -t nat -D PREROUTING -p tcp -j STRAIT_INBOUND",
        "ip6tables -w -t nat -F STRAIT_INBOUND",
        "ip6tables -w -t nat -F STRAIT_IN_REDIRECT",
        "ip6tables -w -t nat -F STRAIT_OUTBOUND",
        "ip6tables -w -t nat -F STRAIT_REDIRECT",
        "ip6tables -w -t nat -X STRAIT_INBOUND",
        "ip6tables -w -t nat -X STRAIT_IN_REDIRECT",
        "ip6tables -w -t nat -X STRAIT_OUTBOUND",
        "ip6tables -w -t nat -X STRAIT_REDIRECT",
    ];
    assert_eq!(lines, expected);
}

#[test]
fn commands_know_their_check_form_and_jump_target() {
    let commands = install_commands(&TransparentConfig::new(5678), Family::V4);
    let jump = commands.iter().find(|c| c.chain == "OUTPUT").expect("OUTPUT jump");
    assert_eq!(jump.action, Action::Append);
    assert!(jump.on_builtin_chain());
    assert_eq!(jump.jump_target(), Some("STRAIT_OUTBOUND"));
    assert_eq!(jump.check_args().join(" "), "-w -t nat -C OUTPUT -p tcp -j STRAIT_OUTBOUND");
    let redirect = commands.iter().find(|c| c.chain == "STRAIT_REDIRECT" && c.action == Action::Append).expect("redirect rule");
    assert!(!redirect.on_builtin_chain());
    assert_eq!(redirect.jump_target(), None, "REDIRECT is a target, not one of our chains");
}

#[test]
fn cidrs_parse_normalise_and_reject_with_a_reason() {
    let good = [
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("10.0.0.1", "10.0.0.1/32"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("192.168.1.255/24", "192.168.1.0/24"),
        ("fd00::1/8", "fd00::/8"),
        ("2001:db8::1", "2001:db8::1/128"),
        ("::/0", "::/0"),
    ];
    for (input, expected) in good {
        let cidr: Cidr = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(cidr.to_string(), expected, "{input}");
    }
    let bad = [
        ("10.0.0.0/33", "at most 32"),
        ("::/129", "at most 128"),
        ("10.0.0/8", "IPv4 or IPv6 address"),
        ("example.com", "IPv4 or IPv6 address"),
        ("10.0.0.0/x", "prefix length"),
        ("10.0.0.0/", "prefix length"),
    ];
    for (input, reason) in bad {
        let error = input.parse::<Cidr>().expect_err(input).to_string();
        assert!(error.contains(input) && error.contains(reason), "{input}: {error}");
    }
}

#[test]
fn validation_reports_every_bad_value_by_field() {
    type Edit = fn(&mut TransparentConfig);
    let cases: &[(&str, Edit, &[&str])] = &[
        ("defaults are valid", |_| {}, &[]),
        ("zero outbound port", |c| c.redirect_port_outbound = 0, &["redirect_port_outbound"]),
        ("zero inbound port", |c| c.redirect_port_inbound = 0, &["redirect_port_inbound"]),
        (
            "inbound port unused without inbound",
            |c| {
                c.redirect_inbound = false;
                c.redirect_port_inbound = 0;
            },
            &[],
        ),
        ("same ports", |c| c.redirect_port_inbound = c.redirect_port_outbound, &["must differ"]),
        (
            "zero excluded ports",
            |c| {
                c.exclude_outbound_ports = vec![80, 0];
                c.exclude_inbound_ports = vec![0];
            },
            &["exclude_outbound_ports[1]", "exclude_inbound_ports[0]"],
        ),
    ];
    for (name, edit, problems) in cases {
        let mut config = TransparentConfig::new(5678);
        edit(&mut config);
        match (config.validate(), problems.is_empty()) {
            (Ok(()), true) => {}
            (Ok(()), false) => panic!("{name}: accepted"),
            (Err(error), _) => {
                let message = error.to_string();
                assert!(!problems.is_empty(), "{name}: rejected: {message}");
                for problem in *problems {
                    assert!(message.contains(problem), "{name}: `{problem}` not in {message}");
                }
            }
        }
    }
}
