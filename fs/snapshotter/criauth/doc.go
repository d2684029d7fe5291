// Package criauth gives ocifs's snapshotter the registry credentials
// kubelet gives containerd. Kubelet sends a private image's credentials
// (from the pod's imagePullSecrets, its credential providers or its
// config.json) only in CRI's PullImage, to the image service; containerd
// uses them for that pull and keeps them nowhere a remote snapshotter can
// read, yet the snapshotter needs them for every lazy read of the image's
// layers. So ocifs can sit in front of containerd's image service:
//
//	kubelet --image-service-endpoint=unix:///run/ocifs/cri-image.sock
//	        --container-runtime-endpoint=unix:///run/containerd/containerd.sock
//
//	srv, err := criauth.Serve("/run/ocifs/cri-image.sock", "/run/containerd/containerd.sock", log)
//	fetchOpts.Keychain = srv.Keychain(authn.DefaultKeychain)
//	...
//	err = srv.Stop()
//
// # What it serves
//
// [Serve] serves CRI's runtime.v1.ImageService only (PullImage,
// ListImages, StreamImages, ImageStatus, RemoveImage, ImageFsInfo) and
// forwards every call unchanged to containerd's CRI socket, answers and
// gRPC errors (code and message) included: a pull containerd refuses for
// want of credentials fails through the proxy with containerd's own error
// (its "401 Unauthorized"). Kubelet opens the image service and the
// runtime service as two connections: --image-service-endpoint (the
// KubeletConfiguration field imageServiceEndpoint) names the first and
// defaults to --container-runtime-endpoint when unset, so the
// RuntimeService stays on containerd's socket and is not served here. An
// ImageService RPC added to CRI later answers Unimplemented until it is
// forwarded here too. crictl pulls go through the proxy only when pointed
// at it (crictl --image-endpoint). Pulls containerd makes on its own (the
// sandbox image, inside RunPodSandbox) never reach the image service:
// their credentials are containerd's configuration, which ocifs does not
// read, so a private sandbox image needs them in the fallback keychain.
//
// # Which credentials answer
//
// A PullImage's AuthConfig is read as containerd's CRI reads it (1.6 and
// 2.x alike): username and password first, else the identity token, else
// auth (base64 of user:password); registry_token is ignored, as containerd
// ignores it. The credentials are recorded under the image's registry host
// and repository, or, when server_address is set, under that address's
// host (containerd uses such credentials only for the host the address
// names, which may be a mirror; an address without a scheme names no
// host, is used by containerd for nothing, and is not recorded). Docker
// Hub's names (docker.io, index.docker.io, registry-1.docker.io) are one.
//
// The keychain of [Server.Keychain] answers a request for a repository, in
// this order:
//
//  1. the credentials of the newest pull of that repository through the
//     proxy: a pull still in flight first (containerd asks the snapshotter
//     for the pull's layers during PullImage, and they must be fetched with
//     the pull's credentials: TestCRISnapshotterReadsWithPullCredentials),
//     else the latest pull that succeeded. Latest
//     pull wins: a later successful pull with other credentials replaces
//     the earlier ones; a failed pull's credentials are forgotten when it
//     fails (kubelet tries each of its candidate credentials in turn) and
//     the earlier ones answer again; a pull without credentials changes
//     nothing. While two pulls of one repository with different
//     credentials are in flight, the newer's answer for both.
//  2. the fallback keychain (authn.DefaultKeychain: docker and podman auth
//     files, credential helpers), when it has credentials for the registry;
//  3. the credentials of the latest successful pull of any other
//     repository on the same registry host;
//  4. anonymous, with one Info line per repository saying what to do if it
//     is private.
//
// Step 2 before 3: credentials a node's administrator configured for a
// registry are explicit; those of another repository are a guess.
//
// # Lifetime: memory only
//
// Credentials live in this process's memory and nowhere else: nothing is
// written to disk, and no log line, error or gRPC answer of this package
// carries a username's password, a token or an auth field (the tests grep
// the captured log for them). They live until the process exits; nothing
// expires them, so a short-lived token (a cloud registry's 12-hour token)
// is as good as kubelet's next pull of that repository makes it.
//
// So after ocifs restarts they are gone. Layers already fetched are served
// from the digest cache without the registry; a lazy read of bytes not yet
// fetched from a private registry then goes to the fallback keychain, and
// without credentials there the registry answers 401: fetch returns its
// ErrUnauthorized (whose message names the auth files it reads), fs turns
// it into EIO for that read, and the keychain's Info line for that
// repository says to pull the image again through the CRI image service or
// to give root an auth file or credential helper for the registry
// (TestRestartForgetsCredentials). Kubelet does not pull an image it
// has (imagePullPolicy IfNotPresent) after a restart, so nodes that use
// private registries with ocifs should configure one of those, or pull
// again (crictl --image-endpoint unix:///run/ocifs/cri-image.sock pull
// --creds ...). Writing the credentials down to survive restarts would put
// kubelet's secrets on the node's disk, which this package never does.
//
// The socket is created mode 0660 (as containerd's own): whoever can
// connect to it can pull with credentials of their own, exactly as on
// containerd's socket, but no RPC reads recorded credentials back.
package criauth
