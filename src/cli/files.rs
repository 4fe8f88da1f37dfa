//! The flags of `ncx server`, `ncx client` and `ncx visit` as configuration files: each is laid
//! over the file it names (or an empty one), so flags and files go through the same checks.

use super::*;

impl ServerArgs {
    pub(super) fn settings(self) -> anyhow::Result<ServerSettings> {
        let mut flags = ServerFile {
            listen: self.listen.map(spanned),
            handshake_timeout_secs: self.handshake_timeout_secs.map(spanned),
            max_visitors_per_session: self.max_visitors_per_session.map(spanned),
            proxy_protocol_from: (!self.proxy_protocol_from.is_empty())
                .then(|| spanned(self.proxy_protocol_from.into_iter().map(spanned).collect())),
            fallback: self.fallback.map(spanned),
            websocket_path: self.websocket_path.map(spanned),
            metrics_listen: self.metrics_listen.map(spanned),
            admin_socket: self.admin_socket.map(spanned),
            ..Default::default()
        };
        if self.cert.is_some() || self.auto_cert_dir.is_some() {
            flags.tls = Some(ServerTlsFile {
                cert: self.cert.map(spanned),
                key: self.key.map(spanned),
                auto_cert_dir: self.auto_cert_dir,
                client_ca: None,
            });
        }
        if let Some(name) = self.identity {
            let token = match self.token_file {
                Some(_) => None,
                None => match self.token.or_else(env_token).filter(|t| !t.is_empty()) {
                    Some(t) => Some(spanned(t)),
                    None => anyhow::bail!(
                        "--identity {name} needs a token: pass --token or --token-file, or set the environment variable NCX_TOKEN"
                    ),
                },
            };
            flags.identities.push(IdentityFile {
                name: spanned(name),
                token,
                token_file: self.token_file.map(spanned),
                auth: None,
                bind: self.bind.map(spanned),
                ports: Some(spanned(
                    self.ports
                        .into_iter()
                        .map(|p| spanned(crate::config::PortEntry(p)))
                        .collect(),
                )),
            });
        }
        Ok(match self.config {
            Some(path) => {
                let src = Source::file(&path)?;
                let mut file: ServerFile = src.parse()?;
                file.resolve_paths(&src);
                file.listen = flags.listen.or(file.listen);
                file.handshake_timeout_secs =
                    flags.handshake_timeout_secs.or(file.handshake_timeout_secs);
                file.max_visitors_per_session = flags
                    .max_visitors_per_session
                    .or(file.max_visitors_per_session);
                file.proxy_protocol_from = flags.proxy_protocol_from.or(file.proxy_protocol_from);
                file.fallback = flags.fallback.or(file.fallback);
                file.websocket_path = flags.websocket_path.or(file.websocket_path);
                file.metrics_listen = flags.metrics_listen.or(file.metrics_listen);
                file.admin_socket = flags.admin_socket.or(file.admin_socket);
                // Certificate flags replace the file's certificate; its client CA stays.
                let client_ca = file.tls.as_mut().and_then(|t| t.client_ca.take());
                file.tls = flags.tls.or(file.tls);
                if let Some(ca) = client_ca {
                    file.tls.get_or_insert_with(Default::default).client_ca = Some(ca);
                }
                file.identities.extend(flags.identities);
                ServerSettings::from_parsed(file, &src)?
            }
            None => ServerSettings::from_flags(flags)?,
        })
    }
}

impl ClientArgs {
    pub(super) fn settings(self) -> anyhow::Result<ClientSettings> {
        let flags = ClientFile {
            local_connect_timeout_secs: self.local_connect_timeout_secs.map(spanned),
            exit_on_forward_failure: self.exit_on_forward_failure.then(|| spanned(true)),
            metrics_listen: self.metrics_listen.map(spanned),
            admin_socket: self.admin_socket.map(spanned),
            services: self
                .services
                .into_iter()
                .map(|s| ServiceFile {
                    name: spanned(s.name.to_string()),
                    local: spanned(s.local),
                    remote_port: s.remote_port,
                    allow: None,
                    deny: None,
                    proxy_protocol: None,
                    private: None,
                    visitors: None,
                    group: None,
                    health_check: None,
                    health_interval_secs: None,
                    health_timeout_secs: None,
                    health_failures: None,
                    protocol: s.udp.then(|| spanned("udp".to_owned())),
                })
                .collect(),
            ..self.connect.flags()
        };
        self.connect.settings(flags)
    }
}

impl VisitArgs {
    pub(super) fn settings(self) -> anyhow::Result<ClientSettings> {
        let mut flags = self.connect.flags();
        // Paired in the order given: the first --listen is the first --service's.
        if self.service.len() != self.listen.len() {
            anyhow::bail!(
                "each --service needs its --listen: got {} --service and {} --listen",
                self.service.len(),
                self.listen.len()
            );
        }
        for (service, listen) in self.service.into_iter().zip(self.listen) {
            // OWNER/SERVICE/udp: a private UDP service.
            let (service, protocol) = match service.strip_suffix("/udp") {
                Some(s) => (s.to_owned(), Some(spanned("udp".to_owned()))),
                None => (service, None),
            };
            flags.visits.push(VisitFile {
                service: spanned(service),
                listen: spanned(listen),
                protocol,
            });
        }
        let settings = self.connect.settings(flags)?;
        if settings.visits.is_empty() {
            anyhow::bail!(
                "nothing to visit: give --service and --listen, or [[visits]] in --config"
            );
        }
        Ok(settings)
    }
}

impl ConnectArgs {
    /// The flags as a [`ClientFile`] to lay over the configuration file.
    fn flags(&self) -> ClientFile {
        // One --server (or --server-fingerprint) is `server`, several are `servers`.
        let one_or_many = |v: &[String]| match v {
            [] => (None, None),
            [one] => (Some(spanned(one.clone())), None),
            many => (
                None,
                Some(spanned(many.iter().cloned().map(spanned).collect())),
            ),
        };
        let (server, servers) = one_or_many(&self.server);
        let (server_fingerprint, server_fingerprints) = one_or_many(&self.server_fingerprint);
        ClientFile {
            server,
            servers,
            server_mode: self.server_mode.clone().map(spanned),
            instance: self.instance.clone().map(spanned),
            server_name: self.server_name.clone().map(spanned),
            identity: self.identity.clone().map(spanned),
            token: self.token.clone().map(spanned),
            token_file: self.token_file.clone().map(spanned),
            server_fingerprint,
            server_fingerprints,
            ca: self.ca.clone().map(spanned),
            insecure_skip_verify: self.insecure_skip_verify.then(|| spanned(true)),
            cert: self.cert.clone().map(spanned),
            key: self.key.clone().map(spanned),
            proxy: self.proxy.clone().map(spanned),
            transport: self
                .websocket
                .as_ref()
                .map(|_| spanned("websocket".to_owned())),
            url: self.websocket.clone().map(spanned),
            ..Default::default()
        }
    }

    fn settings(&self, flags: ClientFile) -> anyhow::Result<ClientSettings> {
        Ok(match &self.config {
            Some(path) => ClientSettings::from_source(&Source::file(path)?, flags, env_token())?,
            None => ClientSettings::from_flags(flags, env_token())?,
        })
    }
}
