//! portico's finalizer on a Service, added and removed with JSON patches
//! guarded by a `test` of what the patch was built from, so a concurrent
//! writer's finalizer is never lost (as kube-runtime's `finalizer` does).

use json_patch::jsonptr::PointerBuf;
use json_patch::{
    AddOperation, Patch as JsonPatch, PatchOperation, RemoveOperation, TestOperation,
};
use serde_json::Value;

use crate::k8s::{Api, LB_FINALIZER, Patch, PatchParams, ResourceExt, Service};

/// The patch that adds portico's finalizer to `svc`'s current list.
pub fn add_patch(svc: &Service) -> JsonPatch {
    let finalizers = PointerBuf::from_tokens(["metadata", "finalizers"]);
    let ops = match svc.metadata.finalizers.as_ref() {
        None => vec![
            PatchOperation::Test(TestOperation {
                path: finalizers.clone(),
                value: Value::Null,
            }),
            PatchOperation::Add(AddOperation {
                path: finalizers,
                value: Value::from(vec![LB_FINALIZER]),
            }),
        ],
        Some(list) => vec![
            PatchOperation::Test(TestOperation {
                path: finalizers.clone(),
                value: Value::from(list.clone()),
            }),
            PatchOperation::Add(AddOperation {
                path: PointerBuf::from_tokens(["metadata", "finalizers", "-"]),
                value: Value::from(LB_FINALIZER),
            }),
        ],
    };
    JsonPatch(ops)
}

/// The patch that removes portico's finalizer, or `None` if `svc` has none.
pub fn remove_patch(svc: &Service) -> Option<JsonPatch> {
    let index = svc.finalizers().iter().position(|f| f == LB_FINALIZER)?;
    let path = PointerBuf::from_tokens([
        "metadata".to_string(),
        "finalizers".into(),
        index.to_string(),
    ]);
    Some(JsonPatch(vec![
        PatchOperation::Test(TestOperation {
            path: path.clone(),
            value: Value::from(LB_FINALIZER),
        }),
        PatchOperation::Remove(RemoveOperation { path }),
    ]))
}

/// Add portico's finalizer; the patched Service.
///
/// # Errors
/// The API server's answer (409/422 when the list changed meanwhile).
pub async fn add(api: &Api<Service>, svc: &Service) -> Result<Service, kube::Error> {
    apply(api, svc, add_patch(svc)).await
}

/// Remove portico's finalizer; the patched Service, or `None` when there was
/// nothing to remove or the Service is gone (a Service already gone is
/// success).
///
/// # Errors
/// The API server's answer.
pub async fn remove(api: &Api<Service>, svc: &Service) -> Result<Option<Service>, kube::Error> {
    let Some(patch) = remove_patch(svc) else {
        return Ok(None);
    };
    match apply(api, svc, patch).await {
        // Deleted once the last finalizer went.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        other => other.map(Some),
    }
}

async fn apply(
    api: &Api<Service>,
    svc: &Service,
    patch: JsonPatch,
) -> Result<Service, kube::Error> {
    api.patch(
        &svc.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::svc;

    fn applied(svc: &Service, patch: &JsonPatch) -> Result<Vec<String>, json_patch::PatchError> {
        let mut doc = serde_json::to_value(svc).expect("json");
        // The API server's JSON patch reads a missing member as null in a
        // `test`; the json-patch crate wants it present.
        doc["metadata"]
            .as_object_mut()
            .expect("metadata")
            .entry("finalizers")
            .or_insert(Value::Null);
        json_patch::patch(&mut doc, patch)?;
        let out: Service = serde_json::from_value(doc).expect("a Service");
        Ok(out.finalizers().to_vec())
    }

    #[test]
    fn patches_keep_other_finalizers_and_fail_on_a_changed_list() {
        let bare = svc("default", "web").build();
        assert_eq!(
            applied(&bare, &add_patch(&bare)).expect("add"),
            [LB_FINALIZER]
        );

        let theirs = svc("default", "web").finalizer("example.com/keep").build();
        assert_eq!(
            applied(&theirs, &add_patch(&theirs)).expect("add"),
            ["example.com/keep", LB_FINALIZER]
        );
        let moved_on = svc("default", "web").finalizer("example.com/other").build();
        assert!(
            applied(&moved_on, &add_patch(&theirs)).is_err(),
            "a list that changed since the patch was built fails the test op"
        );

        let both = svc("default", "web")
            .finalizer("example.com/keep")
            .finalizer(LB_FINALIZER)
            .build();
        let remove = remove_patch(&both).expect("ours is there");
        assert_eq!(
            applied(&both, &remove).expect("remove"),
            ["example.com/keep"]
        );
        assert!(remove_patch(&theirs).is_none(), "nothing of ours to remove");
    }
}
