"""Schemas of the emulator's built-in kinds (standard library only), written from the Kubernetes
API reference: every field name and its type, for the kinds the emulator serves.

One table feeds three things (kube_emulator.py):
- `/openapi/v3/...` component schemas with the real names (io.k8s.api.apps.v1.Deployment, ...),
  `x-kubernetes-group-version-kind`, `$ref`s wrapped in `allOf` as the real server writes them,
  and the patch merge keys kubectl reads to compute strategic merge patches;
- the server's decoding of built-in objects: unknown fields dropped (a warning) or refused
  (`fieldValidation=Strict`), a value of the wrong JSON type refused with Go's decoding error;
- the merge keys the server's strategic merge and apply use for those kinds' lists.

Notation of a field's type: "string", "int32", "int64", "boolean", "number", "quantity",
"intstr", "time" (RFC 3339), "microtime", "bytes" (base64), "object" (free-form: anything is
kept), a definition (short name "core.Container"), "[T]" a list of T, "{T}" a map of string
to T. A list may name its merge key(s) after "|": "[core.Container|name]" merges by `name`
(x-kubernetes-patch-merge-key, list-type map), "[core.ContainerPort|containerPort,protocol]"
by the first key, with both as list-map keys, "[string|]" is a set (finalizers),
"+retainKeys" adds that patch strategy. A field name ending in "!" is required.

Free-form ("object") is used for what orch's tests never send and would take pages to spell
out (affinity, ephemeral containers, most volume sources, status details).
"""

PACKAGES = {
    "meta": "io.k8s.apimachinery.pkg.apis.meta.v1",
    "core": "io.k8s.api.core.v1",
    "apps": "io.k8s.api.apps.v1",
    "batch": "io.k8s.api.batch.v1",
    "rbac": "io.k8s.api.rbac.v1",
    "net": "io.k8s.api.networking.v1",
    "policy": "io.k8s.api.policy.v1",
    "coord": "io.k8s.api.coordination.v1",
    "events": "io.k8s.api.events.v1",
    "authn": "io.k8s.api.authentication.v1",
    "authz": "io.k8s.api.authorization.v1",
}

SCALARS = {
    "string": ({"type": "string"}, "string"),
    "int32": ({"type": "integer", "format": "int32"}, "int32"),
    "int64": ({"type": "integer", "format": "int64"}, "int64"),
    "boolean": ({"type": "boolean"}, "bool"),
    "number": ({"type": "number", "format": "double"}, "float64"),
    "bytes": ({"type": "string", "format": "byte"}, "[]uint8"),
}
# Named scalar types, as the real documents have them (components of their own).
NAMED_SCALARS = {
    "quantity": ("io.k8s.apimachinery.pkg.api.resource.Quantity",
                 {"oneOf": [{"type": "string"}, {"type": "number"}]}, "resource.Quantity"),
    "intstr": ("io.k8s.apimachinery.pkg.util.intstr.IntOrString",
               {"type": "string", "format": "int-or-string"}, "intstr.IntOrString"),
    "time": ("io.k8s.apimachinery.pkg.apis.meta.v1.Time", {"type": "string", "format": "date-time"}, "v1.Time"),
    "microtime": ("io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime", {"type": "string", "format": "date-time"},
                  "v1.MicroTime"),
    "object": ("io.k8s.apimachinery.pkg.runtime.RawExtension", {"type": "object"}, "runtime.RawExtension"),
}

# Reused field sets.
OPEN = "object"
LOCAL_REF = "core.LocalObjectReference"

DEFS = {
    # -- meta/v1
    "meta.ObjectMeta": {
        "name": "string", "generateName": "string", "namespace": "string", "selfLink": "string", "uid": "string",
        "resourceVersion": "string", "generation": "int64", "creationTimestamp": "time", "deletionTimestamp": "time",
        "deletionGracePeriodSeconds": "int64", "labels": "{string}", "annotations": "{string}",
        "ownerReferences": "[meta.OwnerReference|uid]", "finalizers": "[string|]",
        "managedFields": "[meta.ManagedFieldsEntry]"},
    "meta.OwnerReference": {"apiVersion!": "string", "kind!": "string", "name!": "string", "uid!": "string",
                            "controller": "boolean", "blockOwnerDeletion": "boolean"},
    "meta.ManagedFieldsEntry": {"manager": "string", "operation": "string", "apiVersion": "string", "time": "time",
                                "fieldsType": "string", "fieldsV1": OPEN, "subresource": "string"},
    "meta.LabelSelector": {"matchLabels": "{string}", "matchExpressions": "[meta.LabelSelectorRequirement]"},
    "meta.LabelSelectorRequirement": {"key!": "string", "operator!": "string", "values": "[string]"},
    "meta.Condition": {"type!": "string", "status!": "string", "observedGeneration": "int64",
                       "lastTransitionTime!": "time", "reason!": "string", "message!": "string"},

    # -- core/v1: small objects
    "core.LocalObjectReference": {"name": "string"},
    "core.ObjectReference": {"kind": "string", "namespace": "string", "name": "string", "uid": "string",
                             "apiVersion": "string", "resourceVersion": "string", "fieldPath": "string"},
    "core.Namespace": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                       "spec": "core.NamespaceSpec", "status": "core.NamespaceStatus"},
    "core.NamespaceSpec": {"finalizers": "[string]"},
    "core.NamespaceStatus": {"phase": "string", "conditions": "[object]"},
    "core.ConfigMap": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                       "data": "{string}", "binaryData": "{bytes}", "immutable": "boolean"},
    "core.Secret": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                    "data": "{bytes}", "stringData": "{string}", "type": "string", "immutable": "boolean"},
    "core.ServiceAccount": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                            "secrets": "[core.ObjectReference|name]", "imagePullSecrets": "[%s]" % LOCAL_REF,
                            "automountServiceAccountToken": "boolean"},
    "core.Event": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                   "involvedObject!": "core.ObjectReference", "reason": "string", "message": "string",
                   "source": "core.EventSource", "firstTimestamp": "time", "lastTimestamp": "time", "count": "int32",
                   "type": "string", "eventTime": "microtime", "series": "core.EventSeries", "action": "string",
                   "related": "core.ObjectReference", "reportingComponent": "string", "reportingInstance": "string"},
    "core.EventSource": {"component": "string", "host": "string"},
    "core.EventSeries": {"count": "int32", "lastObservedTime": "microtime"},

    # -- core/v1: pods
    "core.Pod": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                 "spec": "core.PodSpec", "status": "core.PodStatus"},
    "core.PodTemplateSpec": {"metadata": "meta.ObjectMeta", "spec": "core.PodSpec"},
    "core.PodSpec": {
        "volumes": "[core.Volume|name+retainKeys]", "initContainers": "[core.Container|name]",
        "containers!": "[core.Container|name]", "ephemeralContainers": "[object|name]", "restartPolicy": "string",
        "terminationGracePeriodSeconds": "int64", "activeDeadlineSeconds": "int64", "dnsPolicy": "string",
        "nodeSelector": "{string}", "serviceAccountName": "string", "serviceAccount": "string",
        "automountServiceAccountToken": "boolean", "nodeName": "string", "hostNetwork": "boolean",
        "hostPID": "boolean", "hostIPC": "boolean", "shareProcessNamespace": "boolean",
        "securityContext": "core.PodSecurityContext", "imagePullSecrets": "[%s|name]" % LOCAL_REF,
        "hostname": "string", "subdomain": "string", "affinity": OPEN, "schedulerName": "string",
        "tolerations": "[core.Toleration]", "hostAliases": "[object|ip]", "priorityClassName": "string",
        "priority": "int32", "dnsConfig": OPEN, "readinessGates": "[object]", "runtimeClassName": "string",
        "enableServiceLinks": "boolean", "preemptionPolicy": "string", "overhead": "{quantity}",
        "topologySpreadConstraints": "[core.TopologySpreadConstraint|topologyKey,whenUnsatisfiable]",
        "setHostnameAsFQDN": "boolean", "os": "core.PodOS", "hostUsers": "boolean",
        "schedulingGates": "[object|name]", "resourceClaims": "[object|name]", "resources": OPEN,
        "hostnameOverride": "string"},
    "core.PodOS": {"name!": "string"},
    "core.TopologySpreadConstraint": {
        "maxSkew!": "int32", "topologyKey!": "string", "whenUnsatisfiable!": "string",
        "labelSelector": "meta.LabelSelector", "minDomains": "int32", "nodeAffinityPolicy": "string",
        "nodeTaintsPolicy": "string", "matchLabelKeys": "[string]"},
    "core.Toleration": {"key": "string", "operator": "string", "value": "string", "effect": "string",
                        "tolerationSeconds": "int64"},
    "core.Container": {
        "name!": "string", "image": "string", "command": "[string]", "args": "[string]", "workingDir": "string",
        "ports": "[core.ContainerPort|containerPort,protocol]", "envFrom": "[core.EnvFromSource]",
        "env": "[core.EnvVar|name]", "resources": "core.ResourceRequirements", "resizePolicy": "[object]",
        "restartPolicy": "string", "restartPolicyRules": "[object]", "volumeMounts": "[core.VolumeMount|mountPath]",
        "volumeDevices": "[object|devicePath]", "livenessProbe": "core.Probe", "readinessProbe": "core.Probe",
        "startupProbe": "core.Probe", "lifecycle": OPEN, "terminationMessagePath": "string",
        "terminationMessagePolicy": "string", "imagePullPolicy": "string", "securityContext": "core.SecurityContext",
        "stdin": "boolean", "stdinOnce": "boolean", "tty": "boolean"},
    "core.ContainerPort": {"name": "string", "hostPort": "int32", "containerPort!": "int32", "protocol": "string",
                           "hostIP": "string"},
    "core.EnvFromSource": {"prefix": "string", "configMapRef": "core.ConfigMapEnvSource",
                           "secretRef": "core.SecretEnvSource"},
    "core.ConfigMapEnvSource": {"name": "string", "optional": "boolean"},
    "core.SecretEnvSource": {"name": "string", "optional": "boolean"},
    "core.EnvVar": {"name!": "string", "value": "string", "valueFrom": "core.EnvVarSource"},
    "core.EnvVarSource": {"fieldRef": "core.ObjectFieldSelector", "resourceFieldRef": "core.ResourceFieldSelector",
                          "configMapKeyRef": "core.ConfigMapKeySelector", "secretKeyRef": "core.SecretKeySelector",
                          "fileKeyRef": OPEN},
    "core.ObjectFieldSelector": {"apiVersion": "string", "fieldPath!": "string"},
    "core.ResourceFieldSelector": {"containerName": "string", "resource!": "string", "divisor": "quantity"},
    "core.ConfigMapKeySelector": {"name": "string", "key!": "string", "optional": "boolean"},
    "core.SecretKeySelector": {"name": "string", "key!": "string", "optional": "boolean"},
    "core.ResourceRequirements": {"limits": "{quantity}", "requests": "{quantity}", "claims": "[object|name]"},
    "core.VolumeMount": {"name!": "string", "readOnly": "boolean", "recursiveReadOnly": "string",
                         "mountPath!": "string", "subPath": "string", "mountPropagation": "string",
                         "subPathExpr": "string"},
    "core.Volume": {
        "name!": "string", "emptyDir": "core.EmptyDirVolumeSource", "secret": "core.SecretVolumeSource",
        "configMap": "core.ConfigMapVolumeSource", "hostPath": "core.HostPathVolumeSource",
        "persistentVolumeClaim": "core.PersistentVolumeClaimVolumeSource", "projected": OPEN, "downwardAPI": OPEN,
        "csi": OPEN, "ephemeral": OPEN, "image": OPEN, "nfs": OPEN, "iscsi": OPEN, "fc": OPEN, "awsElasticBlockStore": OPEN,
        "gcePersistentDisk": OPEN, "azureDisk": OPEN, "azureFile": OPEN, "cephfs": OPEN, "cinder": OPEN, "flexVolume": OPEN,
        "flocker": OPEN, "gitRepo": OPEN, "glusterfs": OPEN, "photonPersistentDisk": OPEN, "portworxVolume": OPEN,
        "quobyte": OPEN, "rbd": OPEN, "scaleIO": OPEN, "storageos": OPEN, "vsphereVolume": OPEN},
    "core.EmptyDirVolumeSource": {"medium": "string", "sizeLimit": "quantity"},
    "core.SecretVolumeSource": {"secretName": "string", "items": "[core.KeyToPath]", "defaultMode": "int32",
                                "optional": "boolean"},
    "core.ConfigMapVolumeSource": {"name": "string", "items": "[core.KeyToPath]", "defaultMode": "int32",
                                   "optional": "boolean"},
    "core.KeyToPath": {"key!": "string", "path!": "string", "mode": "int32"},
    "core.HostPathVolumeSource": {"path!": "string", "type": "string"},
    "core.PersistentVolumeClaimVolumeSource": {"claimName!": "string", "readOnly": "boolean"},
    "core.Probe": {
        "exec": "core.ExecAction", "httpGet": "core.HTTPGetAction", "tcpSocket": "core.TCPSocketAction",
        "grpc": "core.GRPCAction", "initialDelaySeconds": "int32", "timeoutSeconds": "int32",
        "periodSeconds": "int32", "successThreshold": "int32", "failureThreshold": "int32",
        "terminationGracePeriodSeconds": "int64"},
    "core.ExecAction": {"command": "[string]"},
    "core.HTTPGetAction": {"path": "string", "port!": "intstr", "host": "string", "scheme": "string",
                           "httpHeaders": "[core.HTTPHeader]"},
    "core.HTTPHeader": {"name!": "string", "value!": "string"},
    "core.TCPSocketAction": {"port!": "intstr", "host": "string"},
    "core.GRPCAction": {"port!": "int32", "service": "string"},
    "core.SecurityContext": {
        "capabilities": "core.Capabilities", "privileged": "boolean", "seLinuxOptions": OPEN,
        "windowsOptions": OPEN, "runAsUser": "int64", "runAsGroup": "int64", "runAsNonRoot": "boolean",
        "readOnlyRootFilesystem": "boolean", "allowPrivilegeEscalation": "boolean", "procMount": "string",
        "seccompProfile": "core.SeccompProfile", "appArmorProfile": "core.AppArmorProfile"},
    "core.Capabilities": {"add": "[string]", "drop": "[string]"},
    "core.SeccompProfile": {"type!": "string", "localhostProfile": "string"},
    "core.AppArmorProfile": {"type!": "string", "localhostProfile": "string"},
    "core.PodSecurityContext": {
        "seLinuxOptions": OPEN, "windowsOptions": OPEN, "runAsUser": "int64", "runAsGroup": "int64",
        "runAsNonRoot": "boolean", "supplementalGroups": "[int64]", "supplementalGroupsPolicy": "string",
        "fsGroup": "int64", "sysctls": "[core.Sysctl]", "fsGroupChangePolicy": "string",
        "seccompProfile": "core.SeccompProfile", "appArmorProfile": "core.AppArmorProfile",
        "seLinuxChangePolicy": "string"},
    "core.Sysctl": {"name!": "string", "value!": "string"},
    "core.PodStatus": {
        "observedGeneration": "int64", "phase": "string", "conditions": "[object|type]", "message": "string",
        "reason": "string", "nominatedNodeName": "string", "hostIP": "string", "hostIPs": "[object]",
        "podIP": "string", "podIPs": "[object|ip]", "startTime": "time", "initContainerStatuses": "[object]",
        "containerStatuses": "[object]", "qosClass": "string", "ephemeralContainerStatuses": "[object]",
        "resize": "string", "resourceClaimStatuses": "[object|name]", "extendedResourceClaimStatus": OPEN},

    # -- core/v1: services
    "core.Service": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                     "spec": "core.ServiceSpec", "status": "core.ServiceStatus"},
    "core.ServiceSpec": {
        "ports": "[core.ServicePort|port,protocol]", "selector": "{string}", "clusterIP": "string",
        "clusterIPs": "[string]", "type": "string", "externalIPs": "[string]", "sessionAffinity": "string",
        "loadBalancerIP": "string", "loadBalancerSourceRanges": "[string]", "externalName": "string",
        "externalTrafficPolicy": "string", "healthCheckNodePort": "int32", "publishNotReadyAddresses": "boolean",
        "sessionAffinityConfig": OPEN, "ipFamilies": "[string]", "ipFamilyPolicy": "string",
        "allocateLoadBalancerNodePorts": "boolean", "loadBalancerClass": "string",
        "internalTrafficPolicy": "string", "trafficDistribution": "string"},
    "core.ServicePort": {"name": "string", "protocol": "string", "appProtocol": "string", "port!": "int32",
                         "targetPort": "intstr", "nodePort": "int32"},
    "core.ServiceStatus": {"loadBalancer": OPEN, "conditions": "[meta.Condition|type]"},

    # -- apps/v1
    "apps.Deployment": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                        "spec": "apps.DeploymentSpec", "status": "apps.DeploymentStatus"},
    "apps.DeploymentSpec": {
        "replicas": "int32", "selector!": "meta.LabelSelector", "template!": "core.PodTemplateSpec",
        "strategy": "apps.DeploymentStrategy", "minReadySeconds": "int32", "revisionHistoryLimit": "int32",
        "paused": "boolean", "progressDeadlineSeconds": "int32"},
    "apps.DeploymentStrategy": {"type": "string", "rollingUpdate": "apps.RollingUpdateDeployment"},
    "apps.RollingUpdateDeployment": {"maxUnavailable": "intstr", "maxSurge": "intstr"},
    "apps.DeploymentStatus": {
        "observedGeneration": "int64", "replicas": "int32", "updatedReplicas": "int32", "readyReplicas": "int32",
        "availableReplicas": "int32", "unavailableReplicas": "int32", "terminatingReplicas": "int32",
        "conditions": "[apps.DeploymentCondition|type]", "collisionCount": "int32"},
    "apps.DeploymentCondition": {"type!": "string", "status!": "string", "lastUpdateTime": "time",
                                 "lastTransitionTime": "time", "reason": "string", "message": "string"},
    "apps.ReplicaSet": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                        "spec": "apps.ReplicaSetSpec", "status": "apps.ReplicaSetStatus"},
    "apps.ReplicaSetSpec": {"replicas": "int32", "minReadySeconds": "int32", "selector!": "meta.LabelSelector",
                            "template": "core.PodTemplateSpec"},
    "apps.ReplicaSetStatus": {"replicas!": "int32", "fullyLabeledReplicas": "int32", "readyReplicas": "int32",
                              "availableReplicas": "int32", "terminatingReplicas": "int32",
                              "observedGeneration": "int64", "conditions": "[object|type]"},

    # -- batch/v1
    "batch.Job": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                  "spec": "batch.JobSpec", "status": "batch.JobStatus"},
    "batch.JobSpec": {
        "parallelism": "int32", "completions": "int32", "activeDeadlineSeconds": "int64", "podFailurePolicy": OPEN,
        "successPolicy": OPEN, "backoffLimit": "int32", "backoffLimitPerIndex": "int32", "maxFailedIndexes": "int32",
        "selector": "meta.LabelSelector", "manualSelector": "boolean", "template!": "core.PodTemplateSpec",
        "ttlSecondsAfterFinished": "int32", "completionMode": "string", "suspend": "boolean",
        "podReplacementPolicy": "string", "managedBy": "string"},
    "batch.JobStatus": {
        "conditions": "[object]", "startTime": "time", "completionTime": "time", "active": "int32",
        "succeeded": "int32", "failed": "int32", "terminating": "int32", "completedIndexes": "string",
        "failedIndexes": "string", "uncountedTerminatedPods": OPEN, "ready": "int32"},

    # -- policy/v1
    "policy.PodDisruptionBudget": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                                   "spec": "policy.PodDisruptionBudgetSpec",
                                   "status": "policy.PodDisruptionBudgetStatus"},
    "policy.PodDisruptionBudgetSpec": {"minAvailable": "intstr", "selector": "meta.LabelSelector",
                                       "maxUnavailable": "intstr", "unhealthyPodEvictionPolicy": "string"},
    "policy.PodDisruptionBudgetStatus": {
        "observedGeneration": "int64", "disruptedPods": "{time}", "disruptionsAllowed!": "int32",
        "currentHealthy!": "int32", "desiredHealthy!": "int32", "expectedPods!": "int32",
        "conditions": "[meta.Condition|type]"},

    # -- networking.k8s.io/v1
    "net.NetworkPolicy": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                          "spec": "net.NetworkPolicySpec"},
    "net.NetworkPolicySpec": {"podSelector": "meta.LabelSelector", "ingress": "[net.NetworkPolicyIngressRule]",
                              "egress": "[net.NetworkPolicyEgressRule]", "policyTypes": "[string]"},
    "net.NetworkPolicyIngressRule": {"ports": "[net.NetworkPolicyPort]", "from": "[net.NetworkPolicyPeer]"},
    "net.NetworkPolicyEgressRule": {"ports": "[net.NetworkPolicyPort]", "to": "[net.NetworkPolicyPeer]"},
    "net.NetworkPolicyPort": {"protocol": "string", "port": "intstr", "endPort": "int32"},
    "net.NetworkPolicyPeer": {"podSelector": "meta.LabelSelector", "namespaceSelector": "meta.LabelSelector",
                              "ipBlock": "net.IPBlock"},
    "net.IPBlock": {"cidr!": "string", "except": "[string]"},

    # -- rbac.authorization.k8s.io/v1
    "rbac.Role": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                  "rules": "[rbac.PolicyRule]"},
    "rbac.ClusterRole": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                         "rules": "[rbac.PolicyRule]", "aggregationRule": "rbac.AggregationRule"},
    "rbac.AggregationRule": {"clusterRoleSelectors": "[meta.LabelSelector]"},
    "rbac.PolicyRule": {"verbs!": "[string]", "apiGroups": "[string]", "resources": "[string]",
                        "resourceNames": "[string]", "nonResourceURLs": "[string]"},
    "rbac.RoleBinding": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                         "subjects": "[rbac.Subject]", "roleRef!": "rbac.RoleRef"},
    "rbac.ClusterRoleBinding": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                                "subjects": "[rbac.Subject]", "roleRef!": "rbac.RoleRef"},
    "rbac.Subject": {"kind!": "string", "apiGroup": "string", "name!": "string", "namespace": "string"},
    "rbac.RoleRef": {"apiGroup!": "string", "kind!": "string", "name!": "string"},

    # -- coordination.k8s.io/v1, events.k8s.io/v1
    "coord.Lease": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                    "spec": "coord.LeaseSpec"},
    "coord.LeaseSpec": {"holderIdentity": "string", "leaseDurationSeconds": "int32", "acquireTime": "microtime",
                        "renewTime": "microtime", "leaseTransitions": "int32", "strategy": "string",
                        "preferredHolder": "string"},
    "events.Event": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                     "eventTime!": "microtime", "series": "events.EventSeries", "reportingController": "string",
                     "reportingInstance": "string", "action": "string", "reason": "string",
                     "regarding": "core.ObjectReference", "related": "core.ObjectReference", "note": "string",
                     "type": "string", "deprecatedSource": "core.EventSource", "deprecatedFirstTimestamp": "time",
                     "deprecatedLastTimestamp": "time", "deprecatedCount": "int32"},
    "events.EventSeries": {"count!": "int32", "lastObservedTime!": "microtime"},

    # -- authentication.k8s.io/v1, authorization.k8s.io/v1 (create-only review objects)
    "authn.TokenRequest": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                           "spec!": "authn.TokenRequestSpec", "status": "authn.TokenRequestStatus"},
    "authn.TokenRequestSpec": {"audiences": "[string]", "expirationSeconds": "int64",
                               "boundObjectRef": "authn.BoundObjectReference"},
    "authn.BoundObjectReference": {"kind": "string", "apiVersion": "string", "name": "string", "uid": "string"},
    "authn.TokenRequestStatus": {"token!": "string", "expirationTimestamp!": "time"},
    "authn.SelfSubjectReview": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                                "status": "authn.SelfSubjectReviewStatus"},
    "authn.SelfSubjectReviewStatus": {"userInfo": "authn.UserInfo"},
    "authn.UserInfo": {"username": "string", "uid": "string", "groups": "[string]", "extra": "{[string]}"},
    "authz.SelfSubjectAccessReview": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                                      "spec!": "authz.SelfSubjectAccessReviewSpec",
                                      "status": "authz.SubjectAccessReviewStatus"},
    "authz.SelfSubjectAccessReviewSpec": {"resourceAttributes": "authz.ResourceAttributes",
                                          "nonResourceAttributes": "authz.NonResourceAttributes"},
    "authz.SubjectAccessReview": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                                  "spec!": "authz.SubjectAccessReviewSpec",
                                  "status": "authz.SubjectAccessReviewStatus"},
    "authz.SubjectAccessReviewSpec": {"resourceAttributes": "authz.ResourceAttributes",
                                      "nonResourceAttributes": "authz.NonResourceAttributes", "user": "string",
                                      "groups": "[string]", "extra": "{[string]}", "uid": "string"},
    "authz.SelfSubjectRulesReview": {"apiVersion": "string", "kind": "string", "metadata": "meta.ObjectMeta",
                                     "spec!": "authz.SelfSubjectRulesReviewSpec", "status": "authz.SubjectRulesReviewStatus"},
    "authz.SelfSubjectRulesReviewSpec": {"namespace": "string"},
    "authz.SubjectRulesReviewStatus": {"resourceRules!": "[authz.ResourceRule]", "nonResourceRules!": "[authz.NonResourceRule]",
                                       "incomplete!": "boolean", "evaluationError": "string"},
    "authz.ResourceRule": {"verbs!": "[string]", "apiGroups": "[string]", "resources": "[string]", "resourceNames": "[string]"},
    "authz.NonResourceRule": {"verbs!": "[string]", "nonResourceURLs": "[string]"},
    "authz.ResourceAttributes": {"namespace": "string", "verb": "string", "group": "string", "version": "string",
                                 "resource": "string", "subresource": "string", "name": "string",
                                 "fieldSelector": OPEN, "labelSelector": OPEN},
    "authz.NonResourceAttributes": {"path": "string", "verb": "string"},
    "authz.SubjectAccessReviewStatus": {"allowed!": "boolean", "denied": "boolean", "reason": "string",
                                        "evaluationError": "string"},
}

# (group, version, kind) -> the definition of its objects.
KINDS = {
    ("", "v1", "Namespace"): "core.Namespace", ("", "v1", "Pod"): "core.Pod", ("", "v1", "Event"): "core.Event",
    ("", "v1", "Secret"): "core.Secret", ("", "v1", "ConfigMap"): "core.ConfigMap",
    ("", "v1", "ServiceAccount"): "core.ServiceAccount", ("", "v1", "Service"): "core.Service",
    ("apps", "v1", "Deployment"): "apps.Deployment", ("apps", "v1", "ReplicaSet"): "apps.ReplicaSet",
    ("batch", "v1", "Job"): "batch.Job", ("policy", "v1", "PodDisruptionBudget"): "policy.PodDisruptionBudget",
    ("networking.k8s.io", "v1", "NetworkPolicy"): "net.NetworkPolicy",
    ("rbac.authorization.k8s.io", "v1", "Role"): "rbac.Role",
    ("rbac.authorization.k8s.io", "v1", "ClusterRole"): "rbac.ClusterRole",
    ("rbac.authorization.k8s.io", "v1", "RoleBinding"): "rbac.RoleBinding",
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"): "rbac.ClusterRoleBinding",
    ("coordination.k8s.io", "v1", "Lease"): "coord.Lease", ("events.k8s.io", "v1", "Event"): "events.Event",
    ("authentication.k8s.io", "v1", "TokenRequest"): "authn.TokenRequest",
    ("authentication.k8s.io", "v1", "SelfSubjectReview"): "authn.SelfSubjectReview",
    ("authorization.k8s.io", "v1", "SelfSubjectAccessReview"): "authz.SelfSubjectAccessReview",
    ("authorization.k8s.io", "v1", "SubjectAccessReview"): "authz.SubjectAccessReview",
    ("authorization.k8s.io", "v1", "SelfSubjectRulesReview"): "authz.SelfSubjectRulesReview",
}


def full_name(short):
    pkg, name = short.split(".", 1)
    return PACKAGES[pkg] + "." + name


def go_name(short):
    """The Go type as encoding/json names it in errors: v1.Container, []v1.EnvVar, map[string]string."""
    if short in SCALARS:
        return SCALARS[short][1]
    if short in NAMED_SCALARS:
        return NAMED_SCALARS[short][2]
    return "v1." + short.split(".", 1)[1]


def parse_type(t):
    """'[core.Container|name]' -> ('list', 'core.Container', ['name'], strategy); '{string}' -> ('map', ...)."""
    if t.startswith("[") and t.endswith("]"):
        inner, _, keys = t[1:-1].partition("|")
        strategy = None
        if "|" in t:
            strategy = "merge"
            if keys.endswith("+retainKeys"):
                keys, strategy = keys[:-len("+retainKeys")], "merge,retainKeys"
        return "list", inner, [k for k in keys.split(",") if k], strategy
    if t.startswith("{") and t.endswith("}"):
        return "map", t[1:-1], [], None
    return "one", t, [], None


# ----------------------------------------------------------------------------------------------
# Server side: the definitions expanded into plain structural schemas the emulator walks.
# Keys: "t" (string|int32|int64|boolean|number|bytes|quantity|intstr|time|microtime|object|
# struct|list|map), "props", "required", "items"/"values", "merge" (list merge key, "" for a
# set), "go" (Go type name), "struct" (the Go struct a field belongs to).

_EXPANDED = {}


def expand(t, struct=None):
    kind, inner, keys, strategy = parse_type(t)
    if kind == "list":
        item = expand(inner, struct)
        return {"t": "list", "items": item, "merge": (keys[0] if keys else "") if strategy else None,
                "keys": keys, "go": "[]" + item["go"], "struct": struct}
    if kind == "map":
        value = expand(inner, struct)
        return {"t": "map", "values": value, "go": "map[string]" + value["go"], "struct": struct}
    if inner in SCALARS or inner in NAMED_SCALARS:
        return {"t": inner, "go": go_name(inner), "struct": struct}
    return dict(expand_def(inner), struct=struct)


def expand_def(short):
    if short not in _EXPANDED:
        own = short.split(".", 1)[1]
        out = {"t": "struct", "props": {}, "required": [], "go": go_name(short), "name": own}
        _EXPANDED[short] = out      # definitions are not recursive, but be safe
        for field, t in DEFS[short].items():
            name = field.rstrip("!")
            if field.endswith("!"):
                out["required"].append(name)
            out["props"][name] = expand(t, own)
    return _EXPANDED[short]


def schema_of(group, version, kind):
    """The expanded schema of a built-in kind's objects, or None."""
    short = KINDS.get((group, version, kind))
    return expand_def(short) if short else None


# ----------------------------------------------------------------------------------------------
# OpenAPI v3: the definitions as the real server publishes them.

def openapi_type(t, refs):
    kind, inner, keys, strategy = parse_type(t)
    if kind == "list":
        out = {"type": "array", "items": openapi_type(inner, refs)}
        if strategy:
            if keys:
                out["x-kubernetes-patch-merge-key"] = keys[0]
                out["x-kubernetes-list-type"] = "map"
                out["x-kubernetes-list-map-keys"] = keys
            else:
                out["x-kubernetes-list-type"] = "set"
            out["x-kubernetes-patch-strategy"] = strategy
        else:
            out["x-kubernetes-list-type"] = "atomic"
        return out
    if kind == "map":
        return {"type": "object", "additionalProperties": openapi_type(inner, refs)}
    if inner in SCALARS:
        return dict(SCALARS[inner][0])
    name = NAMED_SCALARS[inner][0] if inner in NAMED_SCALARS else full_name(inner)
    refs.add(inner)
    ref = {"$ref": "#/components/schemas/" + name}
    return {"allOf": [ref], "default": {}} if inner not in NAMED_SCALARS else ref


def openapi_components(kinds):
    """components.schemas for these (group, version, kind)s and everything they refer to."""
    out, todo, seen = {}, [KINDS[k] for k in kinds if k in KINDS], set()
    gvks = {}
    for (g, v, k) in kinds:
        if (g, v, k) in KINDS:
            gvks.setdefault(KINDS[(g, v, k)], []).append({"group": g, "version": v, "kind": k})
    while todo:
        short = todo.pop()
        if short in seen:
            continue
        seen.add(short)
        if short in NAMED_SCALARS:
            name, schema, _ = NAMED_SCALARS[short]
            out[name] = dict(schema)
            continue
        refs = set()
        props, required = {}, []
        for field, t in DEFS[short].items():
            name = field.rstrip("!")
            if field.endswith("!"):
                required.append(name)
            props[name] = openapi_type(t, refs)
        schema = {"type": "object", "properties": props}
        if required:
            schema["required"] = required
        if short in gvks:
            schema["x-kubernetes-group-version-kind"] = gvks[short]
        out[full_name(short)] = schema
        todo.extend(refs - seen)
    return out
