//! What a broker is started with, and how a configuration file becomes it.

use std::net::SocketAddr;
use std::sync::Arc;

use sealpost_protocol::PublicKey;

use crate::acl::Acl;
use crate::config::StorageEngine;
use crate::config::{AuditConfig, Config};
use crate::limits::ServerLimits;
use crate::metrics::MetricsSettings;
use crate::store::Store;
use crate::tls::TlsMaterial;
use crate::Result;

/// Everything a broker needs to run.
pub struct BrokerOptions {
    /// Address to listen on (UDP).
    pub listen: SocketAddr,
    /// Certificates and keys.
    pub tls: TlsMaterial,
    /// The operator's ACL.
    pub acl: Acl,
    /// The storage engine.
    pub store: Arc<dyn Store>,
    /// The topic authority's public key: only policies it signed are stored (none without it).
    pub authority: Option<PublicKey>,
    /// Limits.
    pub limits: ServerLimits,
    /// The metrics endpoint, if any.
    pub metrics: Option<MetricsOptions>,
    /// The audit log, if any: every decision about a peer recorded in it ([`crate::audit`]).
    pub audit: Option<AuditConfig>,
    /// What the broker may remove from its log ([`crate::retention`]): enforced every
    /// [`Retention::interval`](crate::retention::Retention::interval) while it runs.
    pub retention: crate::retention::Retention,
}

/// Where and how the metrics endpoint serves ([`crate::metrics::http`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsOptions {
    /// TCP address of `GET /metrics`.
    pub listen: SocketAddr,
    /// Require TLS with client certificates (the broker's [`TlsMaterial`]); required beyond loopback.
    pub tls: bool,
    /// What is measured: topic labels and their bound, the data folder.
    pub settings: MetricsSettings,
}

/// Checks everything a broker started with `config` would check before serving, without starting one and
/// without opening its store (a running broker may hold it): the TLS files (parsed into the server's TLS
/// configuration: certificates, key, CA bundle, CRLs), the ACL, the metrics address rule and the audit key.
/// What `sealpost-broker check-config` runs, and what a reload checks ([`Running`](crate::reload::Running)).
pub fn check_config(config: &Config) -> Result<()> {
    crate::reload::Running::from_config(config.clone()).map(|_| ())
}

impl BrokerOptions {
    /// Reads the files a configuration names (certificates, keys, CRLs, ACL), checks them as
    /// [`check_config`] does (an error names the file at fault), and opens its store.
    pub fn from_config(config: &Config) -> Result<BrokerOptions> {
        let tls = crate::reload::Running::from_config(config.clone())?.tls().clone();
        let acl = Acl::load(&config.acl)?;
        let store = crate::store::open(config.storage.engine(), &config.data_dir)?;
        let limits = config.limits;
        let metrics = config.metrics.listen.map(|listen| MetricsOptions {
            listen,
            tls: config.metrics.tls,
            settings: MetricsSettings {
                topic_labels: config.metrics.topic_labels,
                max_topic_labels: config.metrics.max_topic_labels,
                data_dir: (config.storage.engine == StorageEngine::Sled).then(|| config.data_dir.clone()),
                reserve_bytes: config.storage.reserve_bytes,
            },
        });
        let authority = config.authority;
        let audit = config.audit.clone();
        let retention = config.retention.clone();
        Ok(BrokerOptions {
            listen: config.listen,
            tls,
            acl,
            store,
            authority,
            limits,
            metrics,
            audit,
            retention,
        })
    }
}
