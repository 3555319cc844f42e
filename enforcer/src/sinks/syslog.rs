//! Reports as RFC 5424 syslog messages, over UDP (RFC 5426), TCP (RFC 6587 octet counting) or
//! TLS (RFC 5425).
//!
//! - Facility `local0` (16): the facilities for security (`auth`, 4, and `authpriv`, 10) are
//!   where logins and PAM write, and a SIEM or rsyslog rule that routes them would mix
//!   connection denials into the authentication log; `local0` is the facility set aside for
//!   site use, so operators route the enforcer's messages with one selector (`local0.*`).
//! - Severity: a denial between two segment members is `warning`, any other denial `notice`, an
//!   audit `informational`; a suspected lateral movement is `critical` (suspected, so short of
//!   `alert`, which asks for action at once); a rejected policy is `error` (the node enforces an
//!   older policy than its operator wrote).
//! - HOSTNAME is the node's name from the report, APP-NAME `enforcer`, PROCID the daemon's pid,
//!   MSGID `DENY`, `AUDIT`, `ALERT` or `POLICY`.
//! - One SD element, `[enforcer@32473 …]` (see [`ENTERPRISE_NUMBER`]), with the fields a syslog
//!   filter most wants without parsing the MSG.
//! - MSG is the OCSF JSON object or a CEF line.

mod transport;

use std::{net::SocketAddr, sync::Arc};

use self::transport::{Connection, Connector};
use super::{
    Sink, SinkError, SyslogFormat, SyslogTransport, cef,
    rfc5424::{ENTERPRISE_NUMBER, Message, SdElement, Severity},
};
use crate::events::{
    FlowRecord, LateralMovementAlert, PatternKind, PolicyRejection, Report, Verdict, ocsf,
    ocsf::Product,
};

const FACILITY_LOCAL0: u8 = 16;
const APP_NAME: &str = "enforcer";

/// Sends reports to a syslog server; connects on the first delivery, and again after a
/// [`Sink::reset`].
#[derive(Debug)]
pub struct SyslogSink {
    address: SocketAddr,
    connector: Connector,
    format: SyslogFormat,
    product: Product,
    procid: String,
    sd_id: String,
    connection: Option<Connection>,
}

impl SyslogSink {
    /// A sink for the server at `address`. Reads the CA file of a TLS transport now, so that a
    /// bad one stops the daemon at startup.
    ///
    /// # Errors
    /// An unreadable or empty CA file, or a server name that is not a DNS name or address.
    pub fn new(
        address: SocketAddr,
        transport: &SyslogTransport,
        format: SyslogFormat,
        product: Product,
    ) -> Result<Self, SinkError> {
        Ok(Self {
            address,
            connector: Connector::new(transport, address)?,
            format,
            product,
            procid: std::process::id().to_string(),
            sd_id: format!("{APP_NAME}@{ENTERPRISE_NUMBER}"),
            connection: None,
        })
    }

    /// The message for one report, in RFC 5424 form without framing.
    fn message(&self, report: &Report) -> String {
        let (severity, msgid, params, node) = match report {
            Report::Flow(record) => {
                let (severity, msgid) = flow_severity(record);
                (severity, msgid, flow_params(record), &record.node)
            }
            Report::Alert(alert) => (
                Severity::Critical,
                "ALERT",
                alert_params(alert),
                &alert.node,
            ),
            Report::Rejection(rejection) => (
                Severity::Error,
                "POLICY",
                rejection_params(rejection),
                &rejection.node,
            ),
        };
        let msg = match self.format {
            SyslogFormat::Ocsf => ocsf::render_report(report, &self.product).to_string(),
            SyslogFormat::Cef => cef::render(report, &self.product),
        };
        Message {
            facility: FACILITY_LOCAL0,
            severity,
            time: report_time(report),
            hostname: &node.hostname,
            app_name: APP_NAME,
            procid: &self.procid,
            msgid,
            structured_data: vec![SdElement {
                id: &self.sd_id,
                params,
            }],
            msg: &msg,
        }
        .to_string()
    }

    async fn send(&mut self, messages: &[String]) -> Result<(), SinkError> {
        if self.connection.is_none() {
            self.connection = Some(self.connector.connect(self.address).await?);
        }
        match &mut self.connection {
            Some(connection) => connection.send(messages, self.address).await,
            None => Err(SinkError::Closed {
                address: self.address,
            }),
        }
    }
}

#[async_trait::async_trait]
impl Sink for SyslogSink {
    async fn deliver(&mut self, batch: &[Arc<Report>]) -> Result<(), SinkError> {
        let messages: Vec<String> = batch.iter().map(|report| self.message(report)).collect();
        let sent = self.send(&messages).await;
        if sent.is_err() {
            self.connection = None;
        }
        sent
    }

    async fn reset(&mut self) {
        self.connection = None;
    }
}

const fn flow_severity(record: &FlowRecord) -> (Severity, &'static str) {
    match record.verdict {
        Verdict::Denied if record.src.segmented && record.dst.segmented => {
            (Severity::Warning, "DENY")
        }
        Verdict::Denied => (Severity::Notice, "DENY"),
        Verdict::Audited => (Severity::Informational, "AUDIT"),
    }
}

const fn report_time(report: &Report) -> std::time::SystemTime {
    match report {
        Report::Flow(record) => record.time,
        Report::Alert(alert) => alert.time,
        Report::Rejection(rejection) => rejection.time,
    }
}

type Params = Vec<(&'static str, String)>;

fn flow_params(record: &FlowRecord) -> Params {
    let mut params = vec![
        ("count", record.count.to_string()),
        ("rule", record.rule.uid.clone()),
        ("ruleName", record.rule.name.clone()),
        ("policy", record.policy_version.clone()),
        ("mode", record.mode.as_str().to_owned()),
        ("layer", record.layer.as_str().to_owned()),
        (
            "proto",
            enforcer_common::protocol::name(record.protocol).to_owned(),
        ),
        ("src", record.src.ip.to_string()),
    ];
    if let Some(port) = record.src.port {
        params.push(("spt", port.to_string()));
    }
    params.push(("dst", record.dst.ip.to_string()));
    if let Some(port) = record.dst.port {
        params.push(("dpt", port.to_string()));
    }
    params.push(("srcIdentity", record.src.name.clone()));
    params.push(("dstIdentity", record.dst.name.clone()));
    if record.revoked {
        params.push(("revoked", "1".to_owned()));
    }
    params
}

fn alert_params(alert: &LateralMovementAlert) -> Params {
    let kind = match alert.kind {
        PatternKind::PortScan => "port-scan",
        PatternKind::Sweep => "sweep",
        PatternKind::FanOut => "fan-out",
    };
    vec![
        ("technique", alert.technique.uid.to_owned()),
        ("kind", kind.to_owned()),
        ("attempts", alert.attempts.to_string()),
        ("targets", alert.distinct_targets.to_string()),
        ("destinations", alert.distinct_destinations.to_string()),
        ("ports", alert.distinct_ports.to_string()),
        ("windowSeconds", alert.window.as_secs().to_string()),
        ("src", alert.src.ip.to_string()),
        ("srcIdentity", alert.src.name.clone()),
        ("policy", alert.policy_version.clone()),
    ]
}

fn rejection_params(rejection: &PolicyRejection) -> Params {
    let mut params = vec![
        ("origin", rejection.origin.clone()),
        ("errors", rejection.errors.len().to_string()),
        ("policyDir", rejection.policy_dir.clone()),
        ("generation", rejection.in_force_generation.to_string()),
    ];
    if let Some(version) = &rejection.in_force_version {
        params.push(("policy", version.clone()));
    }
    params
}

#[cfg(test)]
mod tests;
