# ocifs build, test and demo. `make test` is the CI (.ci/run calls it).
# Every target that needs something installs it first (deps); run as root on
# Debian.

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
# -count=1: never reuse cached results; the tests mount and talk to registries.
TESTFLAGS ?= -count=1 -timeout 12m
# how long each fuzz target runs inside `make test` (a count: a time limit can end
# during the baseline run on a loaded machine and fail), and in `make fuzz`
FUZZTIME_TEST ?= 2000x
FUZZTIME ?= 10m
BIN := bin/ocifs
DEBS := docker-registry umoci skopeo attr busybox-static containerd runc
# Installed without their recommends: podman recommends buildah,
# fuse-overlayfs, slirp4netns, uidmap, catatonit and dbus-user-session, none
# of which root podman with the kernel's overlayfs and no network uses
# (fs/store/podmantest); it depends on conmon, runc and containers-common.
DEBS_NORECOMMENDS := podman

.PHONY: all deps build test vet fmt-check unit fuzz-brief fuzz demo bench bench-go clean containerd2 test-containerd2 install uninstall peers peers-check

all: build

# Debian packages the tests and the demo use: a real registry, the reference
# unpacker, image copies, getfattr, and containerd 1.6 with runc for the CRI
# tests of fs/snapshotter, podman 4.3 for those of fs/store. Installed only
# when missing.
deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@missing=""; for p in $(DEBS_NORECOMMENDS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing without recommends:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@command -v $(GO) >/dev/null || { echo "Go 1.26+ is required (https://go.dev/doc/install)"; exit 1; }
	$(GO) mod download

build: deps
	$(GO) build -o $(BIN) ./cmd/ocifs

# gofmt must print nothing.
fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# -race on every package: fetch, index and fs share state between goroutines.
# The fs and cmd tests mount with FUSE as root and start docker-registry.
unit:
	$(GO) test -race $(TESTFLAGS) ./...

# Each fuzz target runs briefly; `make fuzz` runs them for FUZZTIME.
fuzz-brief:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f ($(FUZZTIME_TEST))"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME_TEST) $$pkg >/tmp/ocifs-fuzz.log 2>&1 || { cat /tmp/ocifs-fuzz.log; exit 1; }; \
		done; \
	done

fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

test: deps fmt-check vet fuzz-brief unit

# containerd 2.x for the CRI tests (fs/snapshotter/critest): containerd, its
# runc shim and ctr built with go install into a directory of their own
# (the shim must sit beside containerd), with crictl for poking at a running
# instance by hand. Built only when missing; about 4 minutes on 2 cores.
CONTAINERD2_VERSION := 2.4.2
CRICTL_VERSION := 1.37.0
CONTAINERD2_DIR := /usr/local/lib/ocifs-test/containerd-$(CONTAINERD2_VERSION)
containerd2: deps
	@for b in containerd containerd-shim-runc-v2 ctr; do \
		[ -x $(CONTAINERD2_DIR)/$$b ] || missing="$$missing github.com/containerd/containerd/v2/cmd/$$b@v$(CONTAINERD2_VERSION)"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "building containerd $(CONTAINERD2_VERSION) into $(CONTAINERD2_DIR)"; \
		GOBIN=$(CONTAINERD2_DIR) $(GO) install $$missing; \
	fi
	@[ -x $(CONTAINERD2_DIR)/crictl ] || { echo "building crictl $(CRICTL_VERSION) into $(CONTAINERD2_DIR)"; \
		GOBIN=$(CONTAINERD2_DIR) $(GO) install sigs.k8s.io/cri-tools/cmd/crictl@v$(CRICTL_VERSION); }

# The CRI tests against containerd 2.x ('/containerd-2' picks their
# containerd 2.x subtests; `make test` runs the 1.6 ones).
test-containerd2: containerd2
	OCIFS_CONTAINERD2_DIR=$(CONTAINERD2_DIR) $(GO) test -race $(TESTFLAGS) -run '/containerd-2' ./fs/snapshotter/...

# The built-in demo: a loopback registry, the Go toolchain as an image, a lazy
# mount, `go version` run from inside it.
demo: build
	$(GO) run ./bench/demo -ocifs $(BIN)

# Issue 6: lazy mount vs full pulls, images built here, registry in a network
# namespace of its own; writes bench/results/<date>.{json,md,svg}.
# BENCHFLAGS=--quick for a smoke run. The Go micro-benchmarks: make bench-go.
BENCH_DEBS := docker-registry containerd iproute2 busybox-static
BENCHFLAGS ?=
bench: build
	@missing=""; for p in $(BENCH_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(GO) run ./bench/run --ocifs $(BIN) $(BENCHFLAGS)

# The peers `make bench` measures against (issues 14-16), each a small main
# of our own in a nested module (bench/peers/<name>/go.mod pins the peer's
# library version; none is a dependency of ocifs), built into PEERS_DIR.
# Built only when missing or older than their go.mod.
PEERS_DIR := bench/peers/bin
PEERS := stargz-store stargz-snapshotter soci-snapshotter soci-convert
peers: deps
	@mkdir -p $(PEERS_DIR)
	@for p in $(PEERS); do \
		out=$$(sed -n 's|^// Command \([^ ]*\) .*|\1|p' bench/peers/$$p/main.go | head -1); \
		if [ ! -x $(PEERS_DIR)/$$out ] || [ bench/peers/$$p/go.mod -nt $(PEERS_DIR)/$$out ] || [ bench/peers/$$p/main.go -nt $(PEERS_DIR)/$$out ]; then \
			echo "building $$out from bench/peers/$$p"; \
			(cd bench/peers/$$p && $(GO) build -o $(CURDIR)/$(PEERS_DIR)/$$out .) || exit 1; \
		fi; \
	done

# Each peer started against containerd 2.x (CRI) or podman, one container
# from an eStargz image of the loopback registry (bench/peers_test.go;
# skipped with the reason when a binary is missing).
peers-check: peers containerd2
	OCIFS_PEERS_DIR=$(CURDIR)/$(PEERS_DIR) OCIFS_CONTAINERD2_DIR=$(CONTAINERD2_DIR) $(GO) test -count=1 -v -run 'TestPeer' ./bench/

bench-go: deps
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf bin

# make install: the binary into $(DESTDIR)$(BINDIR) and every unit under
# cmd/ocifs/systemd into $(DESTDIR)$(UNITDIR), with @BINDIR@ in them replaced
# by BINDIR; then, when systemd runs this machine and DESTDIR is empty,
# systemctl daemon-reload. Enable a unit with systemctl enable --now
# (see the README's "Operating ocifs").
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
UNITS := $(wildcard cmd/ocifs/systemd/*.service cmd/ocifs/systemd/*.socket)

install:
	@command -v $(GO) >/dev/null || { echo "Go 1.26+ is required (https://go.dev/doc/install)"; exit 1; }
	$(GO) build -o $(BIN) ./cmd/ocifs
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/ocifs
	@for u in $(UNITS); do \
		echo "install $$u -> $(DESTDIR)$(UNITDIR)/$$(basename $$u)"; \
		install -d $(DESTDIR)$(UNITDIR) && \
		sed 's|@BINDIR@|$(BINDIR)|g' $$u > $(DESTDIR)$(UNITDIR)/$$(basename $$u).tmp && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$u).tmp && \
		mv $(DESTDIR)$(UNITDIR)/$$(basename $$u).tmp $(DESTDIR)$(UNITDIR)/$$(basename $$u) || exit 1; \
	done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/ocifs
	@for u in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$(basename $$u); done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
