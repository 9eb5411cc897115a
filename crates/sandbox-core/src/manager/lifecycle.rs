//! One sandbox's life: create, pause, resume, destroy, TTL changes,
//! listing, and envd access while it runs.

use super::{
    Arc, BTreeMap, BootTimings, CreateSandbox, Duration, EnvdClient, ExecOutput, ExecRequest,
    GuestImages, Handle, Instant, ListFilter, Manager, ManagerError, PathBuf, Persisted,
    ResumeTimings, SafeName, Sandbox, SandboxConfig, SandboxInfo, SnapshotInfo, State, SystemTime,
    Table, TemplateInfo, lock, new_id,
};

/// How often [`Manager::gone`] looks at a sandbox's state.
pub const GONE_POLL: Duration = Duration::from_millis(250);

impl Manager {
    /// Creates and boots a sandbox from a template (cold boot, or a restore
    /// of its warm snapshot; a ready one from its pool when there is one)
    /// or from a snapshot of the same name.
    pub async fn create(&self, request: CreateSandbox) -> Result<SandboxInfo, ManagerError> {
        let name = SafeName::new(&request.template)?;
        let config = &self.inner.config;
        let (template, images, snapshot, warm) = self.resolve_source(&name)?;
        // A start from a snapshot keeps the snapshotted machine's shape.
        let shape = snapshot
            .as_deref()
            .map(crate::snapshot::shape)
            .transpose()?
            .flatten();
        let mut snapshot = snapshot;
        let (vcpus, memory_mib) = match shape {
            Some(shape) if !warm => {
                let conflicts = request.vcpus.is_some_and(|v| v != shape.vcpus)
                    || request.memory_mib.is_some_and(|m| m != shape.memory_mib);
                if conflicts {
                    return Err(ManagerError::InvalidRequest(format!(
                        "snapshot {template} was taken from a sandbox with {shape}; a sandbox started from it has the same (leave vcpus and memory unset)"
                    )));
                }
                (shape.vcpus, shape.memory_mib)
            }
            _ => (
                request.vcpus.unwrap_or(config.default_vcpus),
                request.memory_mib.unwrap_or(config.default_memory_mib),
            ),
        };
        if warm && shape.is_none_or(|s| (s.vcpus, s.memory_mib) != (vcpus, memory_mib)) {
            // The warm snapshot is of another machine: boot this one cold.
            tracing::info!(template = %template, vcpus, memory_mib, "the template's warm snapshot has another shape; cold boot");
            snapshot = None;
        }
        if vcpus == 0 || vcpus > config.max_vcpus {
            return Err(ManagerError::InvalidRequest(format!(
                "vcpus must be 1..={}, got {vcpus}",
                config.max_vcpus
            )));
        }
        if !(128..=config.max_memory_mib).contains(&memory_mib) {
            return Err(ManagerError::InvalidRequest(format!(
                "memory_mib must be 128..={}, got {memory_mib}",
                config.max_memory_mib
            )));
        }
        let internet = crate::network::resolve_internet(request.internet, config.network.is_some())
            .map_err(ManagerError::InvalidRequest)?;
        let timeout = request.timeout.unwrap_or(config.default_timeout);
        self.check_egress(&request.egress, internet)?;
        // Pooled sandboxes run with no rules of their own: a create with
        // rules takes the restore path.
        if warm
            && request.egress.is_empty()
            && let Some(warm_dir) = snapshot.as_deref()
        {
            let wanted = super::pool::Wanted {
                warm_dir,
                vcpus,
                memory_mib,
                internet,
            };
            if let Some(info) = self
                .create_from_pool(&template, wanted, &request, timeout)
                .await?
            {
                return Ok(info);
            }
        }
        // Pooled sandboxes count as running: at capacity one makes room.
        if matches!(self.check_capacity(), Err(ManagerError::Capacity { .. })) {
            self.evict_pooled().await;
        }
        let id = new_id()?;
        let mut info = starting_info(
            id.clone(),
            template,
            (vcpus, memory_mib),
            internet,
            &request,
            timeout,
        );
        info.traffic_token = traffic_token(&request)?;
        let handle: Handle = Arc::new(tokio::sync::Mutex::new(None));
        let mut guard = handle.lock().await;
        {
            // Capacity is checked and the slot taken under one lock.
            let mut infos = lock(&self.inner.infos);
            self.admit(&infos, None, State::Starting)?;
            if snapshot.is_some() && !warm {
                // Not deleted since it was resolved (see delete_snapshot).
                self.require_snapshot(&info.template)?;
            }
            infos.insert(id.clone(), info.clone());
        }
        lock(&self.inner.handles).insert(id.clone(), handle.clone());
        // The intent: a crash from here on is rolled back at the next start.
        if let Err(err) = self.record_intent(&id, None) {
            self.forget(&id);
            return Err(err);
        }
        crate::crash::point("create.recorded");
        let start = Instant::now();
        // A start from a snapshot gets the backend's default disk over the
        // snapshot's (QEMU: a qcow2 overlay) unless qcow2 is configured.
        let rootfs_provider = config
            .rootfs_provider
            .clone()
            .filter(|p| snapshot.is_none() || p.name() == "qcow2");
        let sandbox_config = SandboxConfig {
            vcpus,
            memory_mib,
            env_vars: request.env_vars,
            snapshot,
            rootfs_provider,
            network: config.network.clone(),
            internet: Some(internet),
            egress: request.egress.clone(),
            ..SandboxConfig::new(&id, images, &config.data_dir)
        };
        match Sandbox::boot(self.inner.hypervisor.as_ref(), sandbox_config).await {
            Ok(sandbox) => {
                crate::crash::point("create.booted");
                info.state = State::Running;
                info.envd_addr = Some(sandbox.envd().addr());
                info.envd_access_token = sandbox.access_token().to_string();
                info.timings_ms = boot_timings(sandbox.timings());
                let persisted = Persisted {
                    info: info.clone(),
                    record: Some(sandbox.record()),
                };
                *guard = Some(sandbox);
                lock(&self.inner.infos).insert(id.clone(), info.clone());
                self.save(&persisted)?;
                tracing::info!(sandbox = %id, template = %info.template, took_ms = start.elapsed().as_millis() as u64, "managed sandbox created");
                Ok(info)
            }
            Err(err) => {
                // Sandbox::boot removed what it made; forget the sandbox.
                self.forget(&id);
                Err(err.into())
            }
        }
    }

    /// What `name` starts from: (template or snapshot name, images, the
    /// snapshot directory to restore, whether that is a template's warm
    /// snapshot).
    pub(super) fn resolve_source(
        &self,
        name: &SafeName,
    ) -> Result<(String, GuestImages, Option<PathBuf>, bool), ManagerError> {
        let store = lock(&self.inner.store);
        if let Some(snapshot) = store.get::<SnapshotInfo>(Table::Snapshots, name.as_str())? {
            let template: TemplateInfo = store
                .get(Table::Templates, &snapshot.template)?
                .ok_or_else(|| ManagerError::TemplateNotFound(snapshot.template.clone()))?;
            let images = GuestImages {
                kernel: template.kernel,
                rootfs: template.rootfs,
            };
            return Ok((
                snapshot.name.clone(),
                images,
                Some(self.snapshot_dir(name)),
                false,
            ));
        }
        let template: TemplateInfo = store
            .get(Table::Templates, name.as_str())?
            .ok_or_else(|| ManagerError::TemplateNotFound(name.to_string()))?;
        // The fast path when the template is warm; a cold boot otherwise.
        let warm = template
            .warm_snapshot
            .filter(|dir| dir.join("vmstate.json").is_file());
        let is_warm = warm.is_some();
        Ok((
            template.name,
            GuestImages {
                kernel: template.kernel,
                rootfs: template.rootfs,
            },
            warm,
            is_warm,
        ))
    }

    pub fn get(&self, id: &str) -> Result<SandboxInfo, ManagerError> {
        lock(&self.inner.infos)
            .get(id)
            .cloned()
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))
    }

    /// The disk space the sandbox's files take (root disk overlay or CoW
    /// file, RAM file, saved state): allocated blocks, so sparse files count
    /// what they really use. 0 once they are gone.
    pub fn disk_usage(&self, id: &str) -> Result<u64, ManagerError> {
        let id = SafeName::new(id)?;
        self.get(id.as_str())?;
        let dir = id.join_under(&self.inner.config.data_dir.join("sandboxes"));
        if !dir.exists() {
            return Ok(0);
        }
        dmsnap::dir_size(&dir).map_err(|err| ManagerError::Store {
            path: dir,
            message: err.to_string(),
        })
    }

    /// Sandboxes matching `filter`, oldest first.
    pub fn list(&self, filter: &ListFilter) -> Vec<SandboxInfo> {
        let mut out: Vec<SandboxInfo> = lock(&self.inner.infos)
            .values()
            .filter(|i| filter.states.is_empty() || filter.states.contains(&i.state))
            .filter(|i| {
                filter
                    .metadata
                    .iter()
                    .all(|(k, v)| i.metadata.get(k) == Some(v))
            })
            .filter(|i| filter.template.as_ref().is_none_or(|t| &i.template == t))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        out
    }

    /// Runs a command in a running sandbox. Ends with
    /// [`ManagerError::InvalidState`] as soon as the sandbox's VM goes away
    /// (see [`Manager::gone`]).
    pub async fn exec(&self, id: &str, request: ExecRequest) -> Result<ExecOutput, ManagerError> {
        let envd = self.envd(id).await?;
        tokio::select! {
            output = envd.exec(request) => output.map_err(|source| {
                ManagerError::from(crate::SandboxError::Envd {
                    sandbox: id.to_string(),
                    source: Box::new(source),
                })
            }),
            state = self.gone(id) => Err(ManagerError::InvalidState {
                id: id.to_string(),
                state,
                operation: "finish the command",
            }),
        }
    }

    /// Resolves, with the state it found, once sandbox `id`'s VM is gone:
    /// paused, stopping, stopped, failed or forgotten (then `stopped`);
    /// not while it is being paused or snapshotted, which its connections
    /// may survive. Looks every [`GONE_POLL`]. A guest that vanishes sends
    /// no FIN, so a request to it would otherwise wait for TCP keepalive
    /// (~25 s).
    pub async fn gone(&self, id: &str) -> State {
        loop {
            tokio::time::sleep(GONE_POLL).await;
            match self.get(id) {
                Ok(info)
                    if matches!(
                        info.state,
                        State::Paused | State::Stopping | State::Stopped | State::Error
                    ) =>
                {
                    return info.state;
                }
                Ok(_) => {}
                Err(_) => return State::Stopped,
            }
        }
    }

    /// The envd client of a running sandbox (files, streams, proxying).
    pub async fn envd(&self, id: &str) -> Result<EnvdClient, ManagerError> {
        let handle = self.handle(id)?;
        let guard = handle.lock().await;
        self.require(id, &[State::Running], "use envd")?;
        guard
            .as_ref()
            .map(|s| s.envd().clone())
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))
    }

    /// Saves a running sandbox to disk; it holds no VMM process after this.
    pub async fn pause(&self, id: &str) -> Result<SandboxInfo, ManagerError> {
        self.pause_as(id, false).await
    }

    /// [`Manager::pause`]; with `filesystem_only` the guest's memory is
    /// dropped and only its disk kept (E2B's filesystem-only pause: the
    /// resume boots afresh, see [`Sandbox::pause_filesystem`]).
    ///
    /// [`Sandbox::pause_filesystem`]: crate::Sandbox::pause_filesystem
    pub async fn pause_as(
        &self,
        id: &str,
        filesystem_only: bool,
    ) -> Result<SandboxInfo, ManagerError> {
        let handle = self.handle(id)?;
        let mut guard = handle.lock().await;
        self.transition(id, &[State::Running], State::Pausing, "pause")?;
        let sandbox = guard
            .as_mut()
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))?;
        if let Err(err) = self.record_intent(id, Some(sandbox.record())) {
            self.set_state(id, State::Running);
            return Err(err);
        }
        crate::crash::point("pause.recorded");
        let paused = if filesystem_only {
            sandbox.pause_filesystem().await
        } else {
            sandbox.pause().await
        };
        match paused {
            Ok(stats) => self.finish(id, sandbox, State::Paused, |info| {
                info.envd_addr = None;
                info.paused_at = Some(SystemTime::now());
                info.timings_ms
                    .insert("pause".into(), stats.took.as_millis() as u64);
            }),
            Err(err) => self.fail(id, sandbox, err),
        }
    }

    /// Continues a paused sandbox; the TTL starts again from now.
    pub async fn resume(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<SandboxInfo, ManagerError> {
        self.resume_as(id, timeout, false).await
    }

    /// [`Manager::resume`]; with `reboot` the guest boots afresh from its
    /// disk even where its memory was saved (E2B's `memory: false`). A
    /// sandbox paused filesystem-only always boots afresh.
    pub async fn resume_as(
        &self,
        id: &str,
        timeout: Option<Duration>,
        reboot: bool,
    ) -> Result<SandboxInfo, ManagerError> {
        let handle = self.handle(id)?;
        let mut guard = handle.lock().await;
        self.transition(id, &[State::Paused], State::Resuming, "resume")?;
        let sandbox = guard
            .as_mut()
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))?;
        if let Err(err) = self.record_intent(id, Some(sandbox.record())) {
            self.set_state(id, State::Paused);
            return Err(err);
        }
        crate::crash::point("resume.recorded");
        let ttl = timeout.unwrap_or(self.inner.config.default_timeout);
        // Once the guest runs, its record (pid, network) is made durable:
        // recovery then adopts it instead of trusting the stale saved state.
        let on_running = |record: &crate::sandbox::SandboxRecord| {
            self.record_intent(id, Some(record.clone()))
                .map_err(|err| crate::SandboxError::Io {
                    what: "record the resumed VM",
                    path: self.inner.config.data_dir.join("petrel.db"),
                    source: std::io::Error::other(err.to_string()),
                })
        };
        match sandbox.resume_as(reboot, &on_running).await {
            Ok(timings) => {
                crate::crash::point("resume.ready");
                let addr = sandbox.envd().addr();
                self.finish(id, sandbox, State::Running, |info| {
                    info.envd_addr = Some(addr);
                    info.paused_at = None;
                    info.end_at = SystemTime::now() + ttl;
                    info.timings_ms.extend(resume_timings(timings));
                })
            }
            Err(err) => self.fail(id, sandbox, err),
        }
    }

    /// Stops a sandbox in any state and removes its files and record; then
    /// prunes the template files nothing stands on any more.
    ///
    /// Never waits behind a stuck operation: when another operation holds
    /// the sandbox (a pause whose QEMU stopped answering, say), the
    /// sandbox's VMM is killed first ([`Manager::kill_processes_of`]), so
    /// that operation fails at once and releases it.
    pub async fn destroy(&self, id: &str) -> Result<(), ManagerError> {
        let handle = self.handle(id)?;
        // Another destroy (the reaper's, at expiry) already under way.
        let already_stopping = self.get(id).is_ok_and(|info| info.state == State::Stopping);
        let mut guard = match handle.try_lock() {
            Ok(guard) => guard,
            Err(_busy) => {
                let killed = self.kill_processes_of(id);
                tracing::info!(sandbox = %id, ?killed, "destroying a busy sandbox: its VMM was killed");
                handle.lock().await
            }
        };
        // Gone while this call waited: a create that failed meanwhile (its
        // VMM killed above) leaves nothing to destroy; a sandbox another
        // destroy was ending (expiry) is not this call's to report as
        // killed: not found, as for any call after it.
        let Ok(previous) = self.get(id).map(|info| info.state) else {
            return if already_stopping {
                Err(ManagerError::SandboxNotFound(id.to_string()))
            } else {
                Ok(())
            };
        };
        self.set_state(id, State::Stopping);
        // The intent: a crash from here on is completed at the next start.
        if let Err(err) = self.record_intent(id, guard.as_ref().map(Sandbox::record)) {
            tracing::warn!(sandbox = %id, %err, "cannot record the destroy's intent; destroying anyway");
        }
        crate::crash::point("destroy.recorded");
        let result = match guard.take() {
            Some(sandbox) => sandbox.destroy().await.map_err(ManagerError::from),
            None => Ok(()),
        };
        lock(&self.inner.infos).remove(id);
        lock(&self.inner.handles).remove(id);
        let forgotten = lock(&self.inner.store).delete(Table::Sandboxes, id);
        tracing::info!(sandbox = %id, from = %previous, ok = result.is_ok(), "managed sandbox destroyed");
        // It may have been the last to stand on an old base or warm snapshot.
        self.prune_unreferenced();
        result.and(forgotten)
    }

    /// Sets the TTL to `timeout` from now (shorter or longer).
    pub fn set_timeout(&self, id: &str, timeout: Duration) -> Result<SandboxInfo, ManagerError> {
        self.update_end(id, SystemTime::now() + timeout, false)
    }

    /// Extends the TTL to at least `timeout` from now; never shortens it.
    pub fn extend_timeout(&self, id: &str, timeout: Duration) -> Result<SandboxInfo, ManagerError> {
        self.update_end(id, SystemTime::now() + timeout, true)
    }

    pub(super) fn update_end(
        &self,
        id: &str,
        end_at: SystemTime,
        only_extend: bool,
    ) -> Result<SandboxInfo, ManagerError> {
        let info = self.update_info(id, |info| {
            if !only_extend || end_at > info.end_at {
                info.end_at = end_at;
            }
        })?;
        self.save_info(&info)?;
        Ok(info)
    }
}

/// `(step, duration)` pairs as `timings_ms` entries.
fn millis<'a>(
    steps: impl IntoIterator<Item = (&'a str, Duration)>,
) -> impl Iterator<Item = (String, u64)> {
    steps
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.as_millis() as u64))
}

/// A resume's steps as `resume_<step>` (and `resume`, the whole).
fn resume_timings(t: ResumeTimings) -> impl Iterator<Item = (String, u64)> {
    millis([
        ("resume_disk", t.disk),
        ("resume_network", t.network),
        ("resume_vm_restore", t.vm_restore),
        ("resume_envd_ready", t.envd_ready),
        ("resume_init", t.init),
        ("resume", t.total),
    ])
}

fn boot_timings(t: BootTimings) -> BTreeMap<String, u64> {
    millis([
        ("prepare", t.prepare),
        ("vm_start", t.vm_started),
        ("envd_ready", t.envd_ready),
        ("init", t.init),
        ("create", t.total),
    ])
    .collect()
}

/// A new traffic token when `request` asks for private traffic.
pub(super) fn traffic_token(request: &CreateSandbox) -> Result<Option<String>, ManagerError> {
    Ok(request
        .private_traffic
        .then(crate::sandbox::random_token)
        .transpose()?)
}

/// The record of a sandbox a create is starting: `request`'s metadata,
/// env and auto-pause, its TTL from now.
pub(super) fn starting_info(
    id: String,
    template: String,
    (vcpus, memory_mib): (u8, u32),
    internet: bool,
    request: &CreateSandbox,
    timeout: Duration,
) -> SandboxInfo {
    let now = SystemTime::now();
    SandboxInfo {
        id,
        template,
        state: State::Starting,
        vcpus,
        memory_mib,
        created_at: now,
        end_at: now + timeout,
        auto_pause: request.auto_pause,
        auto_pause_filesystem: request.auto_pause_filesystem,
        auto_resume: request.auto_resume,
        internet,
        metadata: request.metadata.clone(),
        env_vars: request.env_vars.clone(),
        envd_addr: None,
        envd_access_token: String::new(),
        error: None,
        timings_ms: BTreeMap::new(),
        paused_at: None,
        host_mask: request.host_mask.clone(),
        egress: request.egress.clone(),
        traffic_token: None,
        create_timeout: Some(timeout),
    }
}
