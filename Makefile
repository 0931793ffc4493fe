# combinefs: see README.md. Everything that needs PostgreSQL or FUSE runs as
# root (the PostgreSQL toolset lives in a debootstrapped root).

SHELL    := /bin/bash
GO       ?= go
VERSION  := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
# Majors the integration suite runs against, in order.
PG_MAJORS ?= 17 18
UNIT_PKGS = $(shell $(GO) list ./... | grep -v /integration)

.PHONY: all build lint unit integration test bench demo clean

all: build

# build: the combinefs binary in the current directory (static, so it also
# runs inside the PostgreSQL roots).
build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o combinefs ./cmd/combinefs

# lint: gofmt and go vet must be clean.
lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# unit: everything that needs neither PostgreSQL nor FUSE... except the FUSE
# layer's own tests, which need /dev/fuse, and the S3 storage's, which need
# the S3 server of integration/s3server.sh (they fail rather than skip when
# COMBINEFS_REQUIRE_FUSE=1 and COMBINEFS_REQUIRE_S3=1).
unit: lint
	COMBINEFS_REQUIRE_FUSE=1 COMBINEFS_REQUIRE_S3=1 $(GO) test -race -count=1 -timeout 20m $(UNIT_PKGS)

# integration: end-to-end tests against a real PostgreSQL of each major in
# PG_MAJORS (provisioned by integration/provision.sh) and a real S3 server
# (integration/s3server.sh); nothing may skip.
# Mounts that were there before the run (a user's own) are not the suite's.
integration:
	@before=$$(grep fuse.combinefs /proc/mounts | sort); \
	for m in $(PG_MAJORS); do \
		echo "=== integration tests, PostgreSQL $$m"; \
		PG_MAJOR=$$m COMBINEFS_REQUIRE_PG=1 COMBINEFS_REQUIRE_FUSE=1 COMBINEFS_REQUIRE_S3=1 \
			$(GO) test -count=1 -timeout 40m -v ./integration || exit 1; \
	done; \
	left=$$(grep fuse.combinefs /proc/mounts | sort | comm -13 <(echo "$$before") -); \
	if [ -n "$$left" ]; then echo "the tests left a combinefs mount behind:"; echo "$$left"; exit 1; fi

# test: the whole suite (what CI runs).
test: unit integration

# bench: every headline figure against the reference tools (not part of test).
bench:
	$(GO) run ./bench $(BENCHFLAGS)

# demo: the walkthrough of README.md end to end.
demo: build
	bash integration/demo.sh

clean:
	rm -f combinefs
