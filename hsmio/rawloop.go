package hsmio

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"rekey/providers/keys"
	"rekey/schemas"
)

// The raw PKCS#11 loop: a benchmark peer, not used by rekey's pipeline
// (RawGCM, its call, is: every AES-GCM wrap and unwrap of a KEK).
//
// Issue 14 sets rekey's aes-gcm -> aes-gcm rewrap against what a competent
// engineer would write directly against PKCS#11 with the best key handle
// the token allows. This is that program: no pools, no retries, no
// generations, no crypto11; one logged-in session per goroutine on each
// token, and per DEK the token calls rekey's rewrap makes for that pair
// with verify on. It lives in hsmio because hsmio is the only package that
// may import pkcs11; it logs in through hsmio's token (the process's one
// login per token) and nothing else of hsmio's machinery.

// rawCopyLabelPrefix starts the label of the raw loop's session copies
// (not rekey's copyLabelPrefix: they are not rekey's copies).
const rawCopyLabelPrefix = "rekey-rawloop-copy-"

// RawGCMRewrapLoop is a benchmark peer (rekey-bench's limits section), not
// part of rekey: it rewraps AES-GCM wrapped DEKs from the AES key srcURI
// names to the AES key dstURI names straight through PKCS#11, and returns
// the DEKs rewrapped per second.
//
// wrapped[i] is DEK dekIDs[i] wrapped as hsmio's aes-gcm Wrap writes it
// (nonce(12) || ciphertext || tag(16), AAD schemas.DEKAAD(dekIDs[i])).
// Each of goroutines goroutines opens its own logged-in session on each
// token and, with sessionCopy, makes its own session copy of each key on
// it (C_CopyObject, CKA_TOKEN false: sensitive and non-extractable like the
// key, gone when the session closes); without, it uses the token objects.
// Per DEK it makes the calls of rekey's aes-gcm -> aes-gcm rewrap with
// verify: C_DecryptInit+C_Decrypt (CKM_AES_GCM) on the source to unwrap,
// a crypto/rand nonce (as rekey's wrap) and C_EncryptInit+C_Encrypt on the
// target to wrap, C_DecryptInit+C_Decrypt on the target to verify, a
// compare, and the plaintexts zeroed.
//
// With d > 0 the goroutines cycle over the DEKs for about d; otherwise each
// DEK is rewrapped once. Opening sessions and making copies is not timed.
// The first failure stops every goroutine and is returned (a wrapped key
// the source does not open: keys.ErrUnwrapFailed). The copies are destroyed
// and the sessions closed before it returns. Its sessions count against the
// tokens' session limits: 2 x goroutines when both keys are on one token.
//
// Its AES-GCM calls are github.com/miekg/pkcs11's (RawGCM), as a program of
// its own would make them; with the option OneCallGCM they are the ones
// rekey's aes-gcm keys make (one call into C, no output-size query).
func RawGCMRewrapLoop(ctx context.Context, srcURI, dstURI string, wrapped [][]byte, dekIDs []string, goroutines int, sessionCopy bool, d time.Duration, opts ...RawLoopOption) (perSecond float64, err error) {
	oneCall := false
	for _, o := range opts {
		oneCall = oneCall || o == OneCallGCM
	}
	switch {
	case len(wrapped) == 0:
		return 0, errors.New("raw loop: no DEKs to rewrap")
	case len(wrapped) != len(dekIDs):
		return 0, fmt.Errorf("raw loop: %d wrapped keys but %d dek ids", len(wrapped), len(dekIDs))
	case goroutines < 1:
		return 0, fmt.Errorf("raw loop: goroutines is %d, want at least 1", goroutines)
	}
	src, err := openRawSide(ctx, srcURI, goroutines, sessionCopy, oneCall)
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := src.close(); err == nil && cerr != nil {
			perSecond, err = 0, cerr
		}
	}()
	dst, err := openRawSide(ctx, dstURI, goroutines, sessionCopy, oneCall)
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := dst.close(); err == nil && cerr != nil {
			perSecond, err = 0, cerr
		}
	}()

	var next, done atomic.Int64
	var stop atomic.Bool
	var firstErr error
	var once sync.Once
	fail := func(err error) {
		once.Do(func() { firstErr = err })
		stop.Store(true)
	}
	n := int64(len(wrapped))
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := 0; w < goroutines; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			nonce := make([]byte, schemas.NonceSize)
			for !stop.Load() {
				i := next.Add(1) - 1
				if (d <= 0 && i >= n) || (d > 0 && time.Now().After(deadline)) {
					return
				}
				if i%64 == 0 && ctx.Err() != nil {
					fail(fmt.Errorf("raw loop: %w", ctx.Err()))
					return
				}
				k := int(i % n)
				if err := rawRewrapOne(src, dst, w, wrapped[k], dekIDs[k], nonce); err != nil {
					fail(err)
					return
				}
				done.Add(1)
			}
		}(w)
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(done.Load()) / el, nil
}

// rawRewrapOne is the per-DEK work of goroutine w: unwrap on the source,
// wrap and verify-unwrap on the target, compare.
func rawRewrapOne(src, dst *rawSide, w int, in []byte, dekID string, nonce []byte) error {
	if n := len(in) - schemas.NonceSize - schemas.TagSize; n < keys.MinSecret || n > keys.MaxSecret {
		return fmt.Errorf("raw loop: unwrap DEK %q with %s: %w: wrapped key is %d bytes", dekID, src.ref, keys.ErrUnwrapFailed, len(in))
	}
	aad := schemas.DEKAAD(dekID)
	plain, err := src.gcm(src.sess[w], src.keys[w], false, in[:schemas.NonceSize], aad, in[schemas.NonceSize:])
	defer clear(plain)
	if err != nil {
		return classify(err, fmt.Sprintf("raw loop: unwrap DEK %q with %s", dekID, src.ref))
	}
	if _, err := rand.Read(nonce); err != nil {
		return fmt.Errorf("raw loop: nonce: %w", err)
	}
	ct, err := dst.gcm(dst.sess[w], dst.keys[w], true, nonce, aad, plain)
	if err != nil {
		return classify(err, fmt.Sprintf("raw loop: wrap DEK %q with %s", dekID, dst.ref))
	}
	back, err := dst.gcm(dst.sess[w], dst.keys[w], false, nonce, aad, ct)
	defer clear(back)
	if err != nil {
		return classify(err, fmt.Sprintf("raw loop: verify-unwrap DEK %q with %s", dekID, dst.ref))
	}
	if subtle.ConstantTimeCompare(back, plain) != 1 {
		return fmt.Errorf("raw loop: verify DEK %q with %s: the new wrap does not hold the DEK", dekID, dst.ref)
	}
	return nil
}

// RawGCM is one single-part CKM_AES_GCM encryption or decryption (a
// 128-bit tag, appended to the ciphertext) on a raw session: what a KEK's
// AES-GCM Wrap and Unwrap call, and the raw loops' peer calls (this one,
// and make bench's).
func RawGCM(p *pkcs11.Ctx, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle, encrypt bool, nonce, aad, in []byte) ([]byte, error) {
	params := pkcs11.NewGCMParams(nonce, aad, schemas.TagSize*8)
	defer params.Free()
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}
	if encrypt {
		if err := p.EncryptInit(sh, mech, key); err != nil {
			return nil, err
		}
		return p.Encrypt(sh, in)
	}
	if err := p.DecryptInit(sh, mech, key); err != nil {
		return nil, err
	}
	return p.Decrypt(sh, in)
}

// rawSide is one key of the raw loop: a session per goroutine and the key
// handle each uses (its own session copy, or the token object).
type rawSide struct {
	t       *token
	p11     *pkcs11.Ctx
	oneCall bool   // AES-GCM through the token's gcmOp, not RawGCM
	ref     string // the key's URI, for messages
	sess    []pkcs11.SessionHandle
	keys    []pkcs11.ObjectHandle
	copied  bool // keys are session copies, to destroy
}

// openRawSide logs in to the token of uri (or reuses the process's login)
// and opens n sessions on it, with a session copy of the key on each if
// sessionCopy.
func openRawSide(ctx context.Context, uri string, n int, sessionCopy, oneCall bool) (*rawSide, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	var tok *token
	// Pools of two, as OpenRawToken: the loop does not use them.
	if err := retry(ctx, nil, func() (err error) { tok, err = openToken(u, 2); return err }); err != nil {
		return nil, err
	}
	s := &rawSide{t: tok, p11: tok.p11, ref: u.KeyURI(), copied: sessionCopy, oneCall: oneCall}
	fail := func(err error, what string) (*rawSide, error) {
		_ = s.close()
		return nil, classify(err, fmt.Sprintf("raw loop: %s (%s)", what, s.ref))
	}
	var orig pkcs11.ObjectHandle
	for i := 0; i < n; i++ {
		sh, err := tok.openSession()
		if err != nil {
			return fail(err, fmt.Sprintf("open session %d of %d on token %q", i+1, n, tok.name))
		}
		s.sess = append(s.sess, sh)
		if i == 0 {
			h, ok, err := tok.findObject(sh, pkcs11.CKO_SECRET_KEY, u.Object, u.ID)
			if err != nil {
				return fail(err, "find the key")
			}
			if !ok {
				return fail(fmt.Errorf("%w on token %q", keys.ErrKeyNotFound, tok.name), "find the key")
			}
			orig = h
		}
		if !sessionCopy {
			s.keys = append(s.keys, orig)
			continue
		}
		var rnd [8]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return fail(err, "label a session copy")
		}
		h, err := tok.p11.CopyObject(sh, orig, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, rawCopyLabelPrefix+hex.EncodeToString(rnd[:])),
		})
		if err != nil {
			return fail(err, "session copy of the key (C_CopyObject; measure the token object instead)")
		}
		s.keys = append(s.keys, h)
	}
	return s, nil
}

// gcm is one AES-GCM operation of the loop.
func (s *rawSide) gcm(sh pkcs11.SessionHandle, key pkcs11.ObjectHandle, encrypt bool, nonce, aad, in []byte) ([]byte, error) {
	if s.oneCall {
		return s.t.gcmOp(sh, key, encrypt, nonce, aad, in)
	}
	return RawGCM(s.p11, sh, key, encrypt, nonce, aad, in)
}

// RawLoopOption is an option of RawGCMRewrapLoop.
type RawLoopOption int

// OneCallGCM makes the raw loop's AES-GCM calls the way rekey's keys make
// them (gcmcall.go) instead of through the binding's calls.
const OneCallGCM RawLoopOption = 1

// close destroys the copies and closes the sessions, and returns the first
// failure (a copy also vanishes with its session).
func (s *rawSide) close() error {
	var first error
	for i, sh := range s.sess {
		if s.copied && i < len(s.keys) {
			if err := s.p11.DestroyObject(sh, s.keys[i]); err != nil && first == nil {
				first = classify(err, fmt.Sprintf("raw loop: destroy the session copy of %s", s.ref))
			}
		}
		if err := s.p11.CloseSession(sh); err != nil && first == nil {
			first = classify(err, fmt.Sprintf("raw loop: close a session on token %q", s.t.name))
		}
	}
	s.sess, s.keys = nil, nil
	return first
}
