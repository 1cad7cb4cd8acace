# rekey: `make demo` and `make test` set everything up on a fresh Debian machine.
SHELL := /bin/bash
GO ?= go
export CGO_ENABLED := 1

.PHONY: all deps build demo demo-s3 test vet fuzz bench clean versitygw faultpkcs11 local-kms

all: build

# System packages the HSM tests and the demo need (SoftHSM2 and its tools),
# and the third-party writers of the interop tests (testdata/interop: Ruby's
# lockbox, Python's cryptography).
deps:
	@if [ ! -f /usr/lib/softhsm/libsofthsm2.so ] || ! command -v softhsm2-util >/dev/null || \
	   [ ! -x /usr/bin/ruby ] || [ ! -d /usr/share/rubygems-integration/all/gems/lockbox-0.6.4 ] || \
	   ! /usr/bin/python3 -c 'import cryptography' 2>/dev/null; then \
	  echo "installing softhsm2, ruby-lockbox and python3-cryptography (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    softhsm2 ruby ruby-lockbox python3 python3-cryptography >/dev/null; \
	fi
	@command -v $(GO) >/dev/null || { echo "Go is required (https://go.dev/dl/)"; exit 1; }

# A real S3 server that checks SigV4 signatures, for the object-store tests;
# built once and cached (about 2-3 minutes the first time).
VERSITYGW_VERSION ?= v1.8.0
VERSITYGW := $(HOME)/.cache/rekey/versitygw-$(VERSITYGW_VERSION)/versitygw
versitygw:
	@test -x $(VERSITYGW) || { echo "building versitygw $(VERSITYGW_VERSION) once (~2-3 min)"; \
	  GOBIN=$(dir $(VERSITYGW)) $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION); }

# The AWS KMS emulator of the awskms tests (providers/awskms/localkms runs
# it in a private network namespace, so only loopback reaches it); built
# once (about 30 s).
LOCAL_KMS_VERSION ?= v0.0.0-20260228092603-2a5e92d09ab6
LOCAL_KMS := $(HOME)/.cache/rekey/local-kms-$(LOCAL_KMS_VERSION)/local-kms
local-kms:
	@test -x $(LOCAL_KMS) || { echo "building local-kms $(LOCAL_KMS_VERSION) once (~30 s)"; \
	  GOBIN=$(dir $(LOCAL_KMS)) $(GO) install github.com/nsmithuk/local-kms@$(LOCAL_KMS_VERSION); }

build:
	$(GO) build -o bin/rekey ./jobs/rekey
	$(GO) build -o bin/softhsm-setup ./jobs/softhsm-setup

demo: deps build
	./jobs/examples/demo.sh

# The same through a real S3 server on 127.0.0.1 (versitygw, SigV4-checking).
demo-s3: deps build versitygw
	VERSITYGW=$(VERSITYGW) ./jobs/examples/demo-s3.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

# The fault-injecting PKCS#11 module (wraps SoftHSM2) of the fault tests;
# see hsmio/faultpkcs11. Its C source uses miekg/pkcs11's PKCS#11 headers.
FAULTPKCS11 := bin/libfaultpkcs11.so
faultpkcs11: $(FAULTPKCS11)
$(FAULTPKCS11): hsmio/faultpkcs11/csrc/faultpkcs11.c
	@mkdir -p bin
	$${CC:-gcc} -shared -fPIC -O2 -Wall -Wextra -Werror -fvisibility=hidden \
	  -I"$$($(GO) list -m -f '{{.Dir}}' github.com/miekg/pkcs11)" -o $@ $< -ldl -lpthread

# Every test, then the race detector on what runs on several goroutines in
# one bundle: files in flight, recycled batches, a reencrypt and a rewrap
# (its rows settled on the DEK table's writer goroutine) through Beam.
test: deps versitygw local-kms vet faultpkcs11
	REKEY_FAULTPKCS11=$(CURDIR)/$(FAULTPKCS11) REKEY_LOCAL_KMS=$(LOCAL_KMS) $(GO) test -count=1 -timeout 30m ./...
	$(GO) test -race -count=1 -timeout 15m ./transforms -run 'Flight|Batch|Arena|Detach'
	REKEY_FAULTPKCS11=$(CURDIR)/$(FAULTPKCS11) REKEY_LOCAL_KMS=$(LOCAL_KMS) $(GO) test -race -count=1 -timeout 15m ./pipeline -run '^TestReencryptRoundTrip$$|^TestRewrapRoundTrip$$'

# Short runs of every fuzz target (go test -fuzz takes one target at a time).
FUZZTIME ?= 20s
fuzz:
	$(GO) test ./schemas -run '^$$' -fuzz '^FuzzParseEnvelope$$' -fuzztime $(FUZZTIME)
	$(GO) test ./schemas -run '^$$' -fuzz '^FuzzDEKRow$$' -fuzztime $(FUZZTIME)
	$(GO) test ./schemas/format -run '^$$' -fuzz '^FuzzAESGCMOpen$$' -fuzztime $(FUZZTIME)
	$(GO) test ./hsmio -run '^$$' -fuzz '^FuzzParseURI$$' -fuzztime $(FUZZTIME)
	$(GO) test ./schemas/objfmt -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./schemas/format -run '^$$' -fuzz '^FuzzTinkSplit$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pipeline -run '^$$' -fuzz '^FuzzParseJob$$' -fuzztime $(FUZZTIME)
	$(GO) test ./providers/objstore -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./providers/awskms -run '^$$' -fuzz '^FuzzParseRef$$' -fuzztime $(FUZZTIME)
	$(GO) test ./providers/ibmkp -run '^$$' -fuzz '^FuzzParseURI$$' -fuzztime $(FUZZTIME)
	$(GO) test ./providers/alikms -run '^$$' -fuzz '^FuzzUnframe$$' -fuzztime $(FUZZTIME)

# Measures rekey against this machine's limits (see BENCHMARKS.md); table on stdout,
# JSON in demo/bench/results.json. E.g. BENCHFLAGS='--mem-mib 1024,8192' for the 1 GiB vs 8 GiB check.
BENCHFLAGS ?=
bench: deps local-kms
	$(GO) build -o demo/bench/bin/rekey-bench ./jobs/rekey-bench
	GO=$(GO) REKEY_LOCAL_KMS=$(LOCAL_KMS) ./demo/bench/bin/rekey-bench $(BENCHFLAGS)

clean:
	rm -rf bin demo
