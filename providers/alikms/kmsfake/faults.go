// Package kmsfake is a fake of Alibaba Cloud KMS for tests: an HTTP server
// answering the KMS OpenAPI (the shared gateway: Encrypt, Decrypt,
// GenerateDataKey, ReEncrypt, DescribeKey) and an HTTPS server answering
// the KMS instance API (Encrypt, Decrypt, GenerateDataKey in protobuf).
// Alibaba Cloud cannot run on a test machine; these keep their keys in
// memory, check each request's signature with the SDKs' own signing code,
// answer with the documented shapes and error codes, enforce the binding
// (EncryptionContext, Aad) and key states, and inject throttling (HTTP 429
// Rejected.Throttling), 5xx answers and delays on request.
//
// Only test code imports it. What it does not check is listed on Gateway
// and Instance.
package kmsfake

import (
	"crypto/rand"
	"encoding/hex"
	mrand "math/rand/v2"
	"sync"
	"time"
)

// Faults are failures injected into a fraction of the requests that pass
// authentication.
type Faults struct {
	Throttle    float64       // answered HTTP 429 Rejected.Throttling
	Unavailable float64       // answered HTTP 503 ServiceUnavailableTemporary
	Delay       time.Duration // slept before every answer (past a client's timeout: a timeout)
}

// faults is the injection state shared by both servers.
type faults struct {
	mu        sync.Mutex
	f         Faults
	failNext  int
	calls     map[string]int
	throttled int
	denied    map[[2]string]bool
}

// Deny refuses action to a principal (an AccessKey ID, a ClientKey's
// KeyId) with HTTP 403 Forbidden.NoPermission: the one permission rule
// the fakes model.
func (s *faults) Deny(principal, action string) {
	s.mu.Lock()
	if s.denied == nil {
		s.denied = map[[2]string]bool{}
	}
	s.denied[[2]string{principal, action}] = true
	s.mu.Unlock()
}

func (s *faults) isDenied(principal, action string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.denied[[2]string{principal, action}]
}

// SetFaults replaces the injected faults.
func (s *faults) SetFaults(f Faults) {
	s.mu.Lock()
	s.f = f
	s.mu.Unlock()
}

// FailNext answers the next n authenticated requests with HTTP 503.
func (s *faults) FailNext(n int) {
	s.mu.Lock()
	s.failNext = n
	s.mu.Unlock()
}

// Calls is how many authenticated requests of action arrived (faults
// included).
func (s *faults) Calls(action string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[action]
}

// Throttled is how many requests were answered 429.
func (s *faults) Throttled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.throttled
}

// inject counts a call and picks its fault: 429, 503 or none (0).
func (s *faults) inject(action string) int {
	s.mu.Lock()
	if s.calls == nil {
		s.calls = map[string]int{}
	}
	s.calls[action]++
	f, status := s.f, 0
	switch {
	case s.failNext > 0:
		s.failNext--
		status = 503
	case f.Throttle > 0 && mrand.Float64() < f.Throttle:
		s.throttled++
		status = 429
	case f.Unavailable > 0 && mrand.Float64() < f.Unavailable:
		status = 503
	}
	s.mu.Unlock()
	if f.Delay > 0 {
		time.Sleep(f.Delay)
	}
	return status
}

// uuid is a random version 4 UUID, the shape of KMS key and request IDs.
func uuid() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
