package alikms

import (
	"bytes"
	"errors"
	"testing"

	"rekey/schemas"
)

func TestFrame(t *testing.T) {
	iv, ct := bytes.Repeat([]byte{1}, gcmIVSize), bytes.Repeat([]byte{2}, 48)
	w, err := frame(iv, ct)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(append([]byte{1, 12}, iv...), ct...); !bytes.Equal(w, want) {
		t.Fatalf("frame = %x, want %x", w, want)
	}
	giv, gct, err := unframe(w)
	if err != nil || !bytes.Equal(giv, iv) || !bytes.Equal(gct, ct) {
		t.Fatalf("unframe(frame) = %x, %x, %v", giv, gct, err)
	}
	for _, c := range []struct{ iv, ct []byte }{{iv[:11], ct}, {append(iv, 0), ct}, {iv, nil}, {iv, make([]byte, schemas.MaxWrappedDEK)}} {
		if _, err := frame(c.iv, c.ct); !errors.Is(err, errBlob) {
			t.Errorf("frame(%d-byte IV, %d-byte blob): %v", len(c.iv), len(c.ct), err)
		}
	}
	for _, w := range [][]byte{nil, {1}, {1, 12}, append([]byte{1, 12}, iv...), append([]byte{2, 12}, w[2:]...),
		append([]byte{1, 16}, w[2:]...), append([]byte{1, 0}, w[2:]...), make([]byte, schemas.MaxWrappedDEK+1)} {
		if _, _, err := unframe(w); !errors.Is(err, errBlob) {
			t.Errorf("unframe(%x...): %v", w[:min(len(w), 4)], err)
		}
	}
}

// FuzzUnframe: any input either splits into a 12-byte IV and a ciphertext
// that frame joins back into the same bytes, or is refused.
func FuzzUnframe(f *testing.F) {
	w, _ := frame(make([]byte, gcmIVSize), make([]byte, 48))
	f.Add(w)
	f.Add([]byte{1, 12})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, w []byte) {
		iv, ct, err := unframe(w)
		if err != nil {
			if !errors.Is(err, errBlob) {
				t.Fatalf("unframe: %v, not errBlob", err)
			}
			return
		}
		if len(iv) != gcmIVSize || len(ct) == 0 || len(w) > schemas.MaxWrappedDEK {
			t.Fatalf("unframe accepted %d bytes: %d-byte IV, %d-byte blob", len(w), len(iv), len(ct))
		}
		again, err := frame(iv, ct)
		if err != nil || !bytes.Equal(again, w) {
			t.Fatalf("frame(unframe(w)) = %x, %v; want %x", again, err, w)
		}
	})
}
