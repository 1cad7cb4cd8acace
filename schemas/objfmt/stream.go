package objfmt

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Streaming AES-GCM (NIST SP 800-38D) with a 12-byte IV and a 16-byte tag
// after the ciphertext, as the S3 Encryption Client lays out a body, so
// that an object of any size passes through in bounded memory: CTR from
// inc32(J0), GHASH over the ciphertext, no additional data. A reader
// returns plaintext as it goes and ErrAuth at the end if the tag does not
// match: callers must not commit anything made from it before EOF.

// ErrAuth is a body whose tag does not match (a wrong key or a changed
// body), or a CTR body whose recorded MD5 or length does not match.
var ErrAuth = errors.New("the body does not authenticate")

// MaxGCMBody is the largest GCM plaintext (2^39-256 bits).
const MaxGCMBody = 1<<36 - 32

type fieldElement struct{ low, high uint64 }

type ghash struct {
	table [16]fieldElement
	y     fieldElement
	buf   [16]byte
	n     int // bytes in buf
	total uint64
}

func reverseBits(i int) int {
	i = ((i << 2) & 0xc) | ((i >> 2) & 0x3)
	i = ((i << 1) & 0xa) | ((i >> 1) & 0x5)
	return i
}

func double(x *fieldElement) (d fieldElement) {
	msb := x.high&1 == 1
	d.high = x.high>>1 | x.low<<63
	d.low = x.low >> 1
	if msb {
		d.low ^= 0xe100000000000000
	}
	return d
}

var reduction = [16]uint16{0x0000, 0x1c20, 0x3840, 0x2460, 0x7080, 0x6ca0, 0x48c0, 0x54e0, 0xe100, 0xfd20, 0xd940, 0xc560, 0x9180, 0x8da0, 0xa9c0, 0xb5e0}

func newGHASH(h []byte) *ghash {
	g := &ghash{}
	x := fieldElement{binary.BigEndian.Uint64(h[:8]), binary.BigEndian.Uint64(h[8:])}
	g.table[reverseBits(1)] = x
	for i := 2; i < 16; i += 2 {
		g.table[reverseBits(i)] = double(&g.table[reverseBits(i/2)])
		t := g.table[reverseBits(i)]
		g.table[reverseBits(i+1)] = fieldElement{t.low ^ x.low, t.high ^ x.high}
	}
	return g
}

func (g *ghash) mul(y *fieldElement) {
	var z fieldElement
	for i := 0; i < 2; i++ {
		word := y.high
		if i == 1 {
			word = y.low
		}
		for j := 0; j < 64; j += 4 {
			msw := z.high & 0xf
			z.high = z.high>>4 | z.low<<60
			z.low = z.low>>4 ^ uint64(reduction[msw])<<48
			t := &g.table[word&0xf]
			z.low ^= t.low
			z.high ^= t.high
			word >>= 4
		}
	}
	*y = z
}

func (g *ghash) block(b []byte) {
	g.y.low ^= binary.BigEndian.Uint64(b)
	g.y.high ^= binary.BigEndian.Uint64(b[8:])
	g.mul(&g.y)
}

func (g *ghash) write(p []byte) {
	g.total += uint64(len(p))
	if g.n > 0 {
		k := copy(g.buf[g.n:], p)
		g.n += k
		p = p[k:]
		if g.n < 16 {
			return
		}
		g.block(g.buf[:])
		g.n = 0
	}
	for len(p) >= 16 {
		g.block(p[:16])
		p = p[16:]
	}
	g.n = copy(g.buf[:], p)
}

func (g *ghash) sum(mask []byte) []byte {
	if g.n > 0 {
		clear(g.buf[g.n:])
		g.block(g.buf[:])
		g.n = 0
	}
	g.y.high ^= g.total * 8 // no additional data: its length word is 0
	g.mul(&g.y)
	out := make([]byte, 16)
	binary.BigEndian.PutUint64(out, g.y.low)
	binary.BigEndian.PutUint64(out[8:], g.y.high)
	subtle.XORBytes(out, out, mask)
	return out
}

// gcmStream is the CTR keystream and GHASH of one body.
type gcmStream struct {
	ctr  cipher.Stream
	gh   *ghash
	mask []byte
}

func newGCMStream(key, iv []byte) (*gcmStream, error) {
	if len(iv) != 12 {
		return nil, fmt.Errorf("AES-GCM stream: IV of %d bytes, want 12", len(iv))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	h := make([]byte, 16)
	b.Encrypt(h, h)
	j0 := make([]byte, 16)
	copy(j0, iv)
	j0[15] = 1
	mask := make([]byte, 16)
	b.Encrypt(mask, j0)
	j0[15] = 2
	return &gcmStream{ctr: cipher.NewCTR(b, j0), gh: newGHASH(h), mask: mask}, nil
}

// SmallBody is the largest body NewGCM reads whole, to use the platform's
// AES-GCM (hardware GHASH) instead of the streaming one; larger bodies
// stream in bounded memory.
const SmallBody = 8 << 20

// NewGCM returns the plaintext of an AES-GCM body of size bytes: read whole
// and opened with crypto/cipher up to SmallBody, streamed above it (the
// tag then fails at the end, as a read error).
func NewGCM(body io.Reader, size int64, key, iv []byte) (io.Reader, error) {
	if size > SmallBody || size < 16 || len(iv) != 12 {
		return NewGCMReader(body, size, key, iv)
	}
	ct := make([]byte, size)
	if _, err := io.ReadFull(body, ct); err != nil {
		return nil, fmt.Errorf("read the body: %w", err)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	pt, err := g.Open(ct[:0], iv, ct, nil)
	if err != nil {
		return nil, fmt.Errorf("%w (AES-GCM tag mismatch: a wrong key or a changed body)", ErrAuth)
	}
	return bytes.NewReader(pt), nil
}

// NewGCMSealer is NewGCMWriter for a plaintext of known size: up to
// SmallBody it is sealed whole with crypto/cipher on Close.
func NewGCMSealer(w io.Writer, key, iv []byte, size int64) (io.WriteCloser, error) {
	if size > SmallBody || len(iv) != 12 {
		return NewGCMWriter(w, key, iv)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	return &wholeSealer{g: g, iv: iv, w: w, buf: make([]byte, 0, size+16)}, nil
}

type wholeSealer struct {
	g   cipher.AEAD
	iv  []byte
	w   io.Writer
	buf []byte
}

func (s *wholeSealer) Write(p []byte) (int, error) {
	s.buf = append(s.buf, p...)
	return len(p), nil
}

func (s *wholeSealer) Close() error {
	out := s.g.Seal(s.buf[:0], s.iv, s.buf, nil)
	_, err := s.w.Write(out)
	clear(out)
	return err
}

// GCMReader decrypts body = ciphertext ‖ tag of total length size.
type GCMReader struct {
	s    *gcmStream
	r    io.Reader
	left int64 // ciphertext bytes not yet read
	tag  [16]byte
	err  error
}

// NewGCMReader reads the plaintext of an AES-GCM body of size bytes.
func NewGCMReader(body io.Reader, size int64, key, iv []byte) (*GCMReader, error) {
	if size < 16 {
		return nil, fmt.Errorf("%w: a %d-byte body has no room for the 16-byte tag", ErrAuth, size)
	}
	if size-16 > MaxGCMBody {
		return nil, fmt.Errorf("body of %d bytes is over AES-GCM's limit", size)
	}
	s, err := newGCMStream(key, iv)
	if err != nil {
		return nil, err
	}
	return &GCMReader{s: s, r: body, left: size - 16}, nil
}

func (g *GCMReader) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if g.left == 0 {
		if _, err := io.ReadFull(g.r, g.tag[:]); err != nil {
			g.err = fmt.Errorf("read the tag: %w", err)
			return 0, g.err
		}
		if subtle.ConstantTimeCompare(g.s.gh.sum(g.s.mask), g.tag[:]) != 1 {
			g.err = fmt.Errorf("%w (AES-GCM tag mismatch: a wrong key or a changed body)", ErrAuth)
			return 0, g.err
		}
		g.err = io.EOF
		return 0, io.EOF
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n, err := g.r.Read(p)
	if n > 0 {
		g.s.gh.write(p[:n])
		g.s.ctr.XORKeyStream(p[:n], p[:n])
		g.left -= int64(n)
	}
	if err == io.EOF && g.left > 0 {
		g.err = fmt.Errorf("body ended %d bytes early: %w", g.left, io.ErrUnexpectedEOF)
		return n, g.err
	}
	if err != nil && err != io.EOF {
		g.err = err
		return n, err
	}
	return n, nil
}

// GCMWriter encrypts into w: ciphertext as it is written, the tag on Close.
type GCMWriter struct {
	s   *gcmStream
	w   io.Writer
	buf []byte
	n   int64
}

// NewGCMWriter starts an AES-GCM body.
func NewGCMWriter(w io.Writer, key, iv []byte) (*GCMWriter, error) {
	s, err := newGCMStream(key, iv)
	if err != nil {
		return nil, err
	}
	return &GCMWriter{s: s, w: w}, nil
}

func (g *GCMWriter) Write(p []byte) (int, error) {
	if g.n+int64(len(p)) > MaxGCMBody {
		return 0, fmt.Errorf("plaintext over AES-GCM's limit")
	}
	g.buf = append(g.buf[:0], p...)
	g.s.ctr.XORKeyStream(g.buf, g.buf)
	g.s.gh.write(g.buf)
	g.n += int64(len(p))
	if _, err := g.w.Write(g.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close writes the tag (it does not close w).
func (g *GCMWriter) Close() error {
	_, err := g.w.Write(g.s.gh.sum(g.s.mask))
	return err
}

// CTRStream is OSS's content cipher: AES-CTR with the IV as the initial
// 128-bit big-endian counter. Encryption and decryption are the same.
func CTRStream(key, iv []byte) (cipher.Stream, error) {
	if len(iv) != 16 {
		return nil, fmt.Errorf("AES-CTR: IV of %d bytes, want 16", len(iv))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewCTR(b, iv), nil
}
