//! The WAN between zones, in namespace mode: zones are sets of hosts on the shared bridge; in
//! the WAN namespace, iptables (bridged traffic goes through FORWARD once
//! `bridge-nf-call-iptables` is on) drops everything between hosts of different zones except
//! between their gateways' hosts, and sends that through an NFQUEUE delayer
//! (`strait-wan-delay`, this crate's helper on the `nfq` crate) that holds each packet for the
//! one-way delay. Traffic to and from hosts in no zone (the global) is left alone. UDP between
//! two gateways can be blocked and unblocked, and a share of packets dropped
//! (`-m statistic`), to exercise the TCP fallback and loss.
//!
//! In: a [`Net`] in namespace mode and the zones' hosts. Out: a [`Wan`]; its rules go with the
//! WAN namespace when the net is dropped. In loopback mode [`Wan::link`] says why it cannot.

use std::time::Duration;

use crate::{bin, wait_for, Cmd, Host, Net, Proc};

/// NFQUEUE queue number of the delayer.
const QUEUE: &str = "7";

/// A zone's hosts: the one its gateway runs on, and the others.
pub struct ZoneHosts<'a> {
    /// The gateway's host.
    pub gateway: &'a Host,
    /// Every other host of the zone (workloads).
    pub members: Vec<&'a Host>,
}

impl ZoneHosts<'_> {
    fn all(&self) -> impl Iterator<Item = &Host> {
        std::iter::once(self.gateway).chain(self.members.iter().copied())
    }
}

/// The WAN's rules and delayer.
pub struct Wan {
    wan: Host,
    delayer: Proc,
}

impl Wan {
    /// Isolates the zones from each other but for their gateways, whose traffic is delayed by
    /// `one_way` each way. `Err` (with why) in loopback mode.
    pub fn link(net: &Net, zones: &[ZoneHosts<'_>], one_way: Duration) -> Result<Wan, String> {
        let wan = net.wan().ok_or_else(|| format!("no WAN namespace ({})", net.mode_reason()))?.clone();
        let sysctl = wan.run("sysctl", ["-w", "net.bridge.bridge-nf-call-iptables=1"]);
        if !sysctl.success() {
            return Err(format!("bridge netfilter is unavailable: {}", sysctl.stderr));
        }
        let name = format!("strait-wan-delay-{}ms", one_way.as_millis());
        let delayer = wan.spawn(&name, bin("strait-wan-delay"), [QUEUE, &one_way.as_millis().to_string()]);
        wait_for("the WAN delayer to bind its queue", Duration::from_secs(10), || {
            delayer.assert_running("binding its NFQUEUE");
            delayer.log().contains("ready").then_some(())
        });
        let link = Wan { wan, delayer };
        for (i, a) in zones.iter().enumerate() {
            for (j, b) in zones.iter().enumerate() {
                if i == j {
                    continue;
                }
                for src in a.all() {
                    for dst in b.all() {
                        let (s, d) = (src.addr().to_string(), dst.addr().to_string());
                        if src.name() == a.gateway.name() && dst.name() == b.gateway.name() {
                            link.iptables(&["-A", "FORWARD", "-s", &s, "-d", &d, "-j", "NFQUEUE", "--queue-num", QUEUE, "--queue-bypass"])?;
                        } else {
                            link.iptables(&["-A", "FORWARD", "-s", &s, "-d", &d, "-j", "DROP"])?;
                        }
                    }
                }
            }
        }
        Ok(link)
    }

    /// Stops the delayer, so that another [`Wan::link`] (with another delay) can take its
    /// queue; until then the gateways' packets pass without delay (the rules' bypass), and the
    /// isolation stays.
    pub fn unlink(self) {
        self.delayer.kill9();
    }

    /// Runs `iptables <args>` in the WAN namespace.
    pub fn iptables(&self, args: &[&str]) -> Result<(), String> {
        let out = self.wan.run_cmd(Cmd::new("iptables").args(["-w"]).args(args));
        if out.success() {
            Ok(())
        } else {
            Err(format!("iptables {}: {}", args.join(" "), out.stderr))
        }
    }

    /// Drops (`true`) or lets through again (`false`) UDP between hosts `a` and `b`, both ways.
    pub fn block_udp(&self, a: &Host, b: &Host, blocked: bool) -> Result<(), String> {
        let action = if blocked { "-I" } else { "-D" };
        for (s, d) in [(a, b), (b, a)] {
            let (s, d) = (s.addr().to_string(), d.addr().to_string());
            let mut args = vec![action, "FORWARD"];
            if blocked {
                args.push("1");
            }
            args.extend(["-p", "udp", "-s", &s, "-d", &d, "-j", "DROP"]);
            self.iptables(&args)?;
        }
        Ok(())
    }

    /// Drops a random share `probability` (0..1) of the packets between `a` and `b`, both
    /// ways (`add`), or stops doing so (`!add`, with the same probability).
    pub fn loss(&self, a: &Host, b: &Host, probability: f64, add: bool) -> Result<(), String> {
        let p = format!("{probability}");
        for (s, d) in [(a, b), (b, a)] {
            let (s, d) = (s.addr().to_string(), d.addr().to_string());
            let mut args = if add { vec!["-I", "FORWARD", "1"] } else { vec!["-D", "FORWARD"] };
            args.extend(["-s", &s, "-d", &d, "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"]);
            self.iptables(&args)?;
        }
        Ok(())
    }
}
