"""Start a bulk import from a web app's upload handler, return its name at once, poll it later.

The app's pod runs as a ServiceAccount bound to nightshift's edit role (examples/app/rbac.yaml);
the import's pod and defaults are the platform team's BackgroundJobTemplate `bulk-import`
(examples/templates/bulk-import-template.yaml). Needs the official client: pip install kubernetes
"""

from kubernetes import client, config

GROUP, VERSION, PLURAL = "nightshift.dev", "v1alpha1", "backgroundjobs"


def start_import(api: client.CustomObjectsApi, namespace: str, upload_id: str) -> str:
    """Creates the job and returns its name; the import runs in the cluster, not in the request."""
    job = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BackgroundJob",
        "metadata": {"generateName": "import-", "labels": {"shop.example/upload": upload_id}},
        # Only what the app decides: the rest comes from the template.
        "spec": {"templateRef": {"name": "bulk-import"}, "parameters": {"UPLOAD_ID": upload_id}},
    }
    created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
    return created["metadata"]["name"]


def import_status(api: client.CustomObjectsApi, namespace: str, name: str) -> dict:
    """What an "Active Jobs" page shows: phase, percent done, and the workers' result once done."""
    job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    status = job.get("status", {})
    return {
        "phase": status.get("phase", "Queued"),
        "percent": status.get("progress", {}).get("percent", 0),
        "lastHeartbeat": status.get("lastHeartbeatTime"),
        "result": status.get("result"),  # e.g. {"imported": 7000} once it succeeded
    }


if __name__ == "__main__":
    import sys
    import time

    config.load_incluster_config()  # or config.load_kube_config() outside the cluster
    api = client.CustomObjectsApi()
    namespace = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read().strip()
    name = start_import(api, namespace, sys.argv[1] if len(sys.argv) > 1 else "42")
    print(name)
    while (status := import_status(api, namespace, name))["phase"] not in ("Succeeded", "Failed"):
        print(status)
        time.sleep(5)
    print(status)
