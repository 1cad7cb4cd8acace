package objfmt

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// The streaming AES-GCM agrees with crypto/cipher's, byte for byte, at
// every length around block boundaries and in odd read and write sizes;
// a changed body or tag fails at the end.
func TestGCMStreamMatchesCryptoCipher(t *testing.T) {
	key, iv := make([]byte, 32), make([]byte, 12)
	for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 33, 100, 4095, 4096, 4097, 70000} {
		_, _ = rand.Read(key)
		_, _ = rand.Read(iv)
		pt := make([]byte, n)
		_, _ = rand.Read(pt)
		b, _ := aes.NewCipher(key)
		g, _ := cipher.NewGCM(b)
		want := g.Seal(nil, iv, pt, nil)

		var out bytes.Buffer
		w, err := NewGCMWriter(&out, key, iv)
		if err != nil {
			t.Fatal(err)
		}
		for rest := pt; len(rest) > 0; {
			k := min(len(rest), 1+len(rest)%37)
			if _, err := w.Write(rest[:k]); err != nil {
				t.Fatal(err)
			}
			rest = rest[k:]
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("len %d: streamed seal differs from crypto/cipher", n)
		}
		r, err := NewGCMReader(iotest.OneByteReader(bytes.NewReader(want)), int64(len(want)), key, iv)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("len %d: streamed open = %v", n, err)
		}
		for _, i := range []int{0, len(want) / 2, len(want) - 1} {
			bad := bytes.Clone(want)
			bad[i] ^= 0x80
			r, _ := NewGCMReader(bytes.NewReader(bad), int64(len(bad)), key, iv)
			if _, err := io.ReadAll(r); !errors.Is(err, ErrAuth) {
				t.Fatalf("len %d, byte %d changed: %v, want ErrAuth", n, i, err)
			}
		}
		r, _ = NewGCMReader(bytes.NewReader(want[:len(want)-1]), int64(len(want)), key, iv)
		if _, err := io.ReadAll(r); err == nil {
			t.Fatalf("len %d: a truncated body read without error", n)
		}
	}
}

// The whole-body path agrees with the streaming one, and fails the same.
func TestGCMSmallBodies(t *testing.T) {
	key, iv := make([]byte, 32), make([]byte, 12)
	_, _ = rand.Read(key)
	pt := make([]byte, 100000)
	_, _ = rand.Read(pt)
	var a, b bytes.Buffer
	w1, _ := NewGCMWriter(&a, key, iv)
	_, _ = w1.Write(pt)
	_ = w1.Close()
	w2, _ := NewGCMSealer(&b, key, iv, int64(len(pt)))
	_, _ = w2.Write(pt[:5])
	_, _ = w2.Write(pt[5:])
	_ = w2.Close()
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("whole-body seal differs from the streaming one")
	}
	r, err := NewGCM(bytes.NewReader(b.Bytes()), int64(b.Len()), key, iv)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	if !bytes.Equal(got, pt) {
		t.Fatal("whole-body open differs")
	}
	bad := bytes.Clone(b.Bytes())
	bad[3] ^= 1
	if _, err := NewGCM(bytes.NewReader(bad), int64(len(bad)), key, iv); !errors.Is(err, ErrAuth) {
		t.Fatalf("changed body: %v", err)
	}
}
