//! Templates in the shell: the BackgroundJobTemplate a job names, from the cache; writing it
//! into the job; and waking the jobs that wait for a template when it appears or changes.

use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::reflector::{ObjectRef, Store},
};
use tracing::info;

use super::context::Context;
use crate::controller::Error;
use nightshift_api::{BackgroundJob, BackgroundJobTemplate};
use nightshift_core::{Refusal, jobs::template};

/// The template a job not resolved yet names, from the cache.
pub fn template_of(
    templates: &Store<BackgroundJobTemplate>,
    job: &BackgroundJob,
) -> Option<std::sync::Arc<BackgroundJobTemplate>> {
    let name = job.spec.template_ref.as_ref()?.name.as_str();
    templates.get(&ObjectRef::new(name).within(&job.namespace().unwrap_or_default()))
}

/// Writes the job's template into its spec: reads the job as stored (the cache's typed copy
/// has the defaults filled in, so it cannot tell a field the user set), patches what it leaves
/// unset, only onto that version of it. A patch the API server refuses as invalid (the
/// template's fields and the job's do not fit together) is the job's refusal.
pub async fn resolve(ctx: &Context, job: &BackgroundJob) -> Result<Option<Refusal>, Error> {
    let Some(found) = template_of(&ctx.templates, job) else { return Ok(None) };
    let ns = job.namespace().unwrap_or_default();
    let stored: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &ApiResource::erase::<BackgroundJob>(&()));
    let raw = stored.get(&job.name_any()).await?;
    let generation = found.metadata.generation.unwrap_or(1);
    let rv = raw.metadata.resource_version.as_deref();
    let patch = template::merge_patch(&raw.data["spec"], &found.name_any(), generation, &found.spec, rv);
    let jobs: Api<BackgroundJob> = Api::namespaced(ctx.client.clone(), &ns);
    let params = PatchParams { field_manager: Some(nightshift_api::MANAGER.into()), ..Default::default() };
    match jobs.patch(&job.name_any(), &params, &Patch::Merge(&patch)).await {
        Ok(_) => {
            info!(template = found.name_any(), generation, "wrote the template into the job");
            Ok(None)
        }
        Err(kube::Error::Api(e)) if e.code == 400 || e.code == 422 => Ok(Some(Refusal::Invalid { message: e.message })),
        Err(e) => Err(e.into()),
    }
}

/// The jobs that wait for `template` (not resolved yet, naming it): to wake when it changes.
pub fn waiting_for(jobs: &Store<BackgroundJob>, template: &BackgroundJobTemplate) -> Vec<ObjectRef<BackgroundJob>> {
    let (ns, name) = (template.namespace(), template.name_any());
    jobs.state()
        .iter()
        .filter(|j| j.namespace() == ns && template::unresolved(j))
        .filter(|j| j.spec.template_ref.as_ref().is_some_and(|r| r.name == name))
        .map(|j| ObjectRef::from_obj(&**j))
        .collect()
}
