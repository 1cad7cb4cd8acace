package hsmio

/*
#cgo linux LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

// The few PKCS#11 v2.40 types this file needs, as the standard headers lay
// them out on Linux (CK_ULONG is unsigned long; structures not packed).
typedef unsigned long rk_ulong;
typedef rk_ulong (*rk_init_fn)(rk_ulong session, void *mechanism, rk_ulong key);
typedef rk_ulong (*rk_op_fn)(rk_ulong session, unsigned char *in, rk_ulong inlen, unsigned char *out, rk_ulong *outlen);
typedef rk_ulong (*rk_get_list_fn)(void **list);

// CK_FUNCTION_LIST up to C_Decrypt: the version, then the entry points in
// pkcs11f.h's order (C_EncryptInit is the 30th).
typedef struct {
	unsigned char major, minor;
	void *before[29]; // C_Initialize .. C_FindObjectsFinal
	rk_init_fn encrypt_init;
	rk_op_fn encrypt;
	void *encrypt_update, *encrypt_final;
	rk_init_fn decrypt_init;
	rk_op_fn decrypt;
} rk_function_list;

typedef struct {
	unsigned char *iv;
	rk_ulong iv_len, iv_bits;
	unsigned char *aad;
	rk_ulong aad_len, tag_bits;
} rk_gcm_params; // CK_GCM_PARAMS

typedef struct {
	rk_ulong mechanism;
	void *parameter;
	rk_ulong parameter_len;
} rk_mechanism; // CK_MECHANISM

#define RK_CKM_AES_GCM 0x1087UL
#define RK_CKR_BUFFER_TOO_SMALL 0x150UL
#define RK_CKR_HOST_MEMORY 0x2UL

// rk_function_list_of returns the function list of the module at path,
// which this process has loaded already (RTLD_NOLOAD): the same module
// instance, initialized by its first user. NULL if it is not loaded or
// has no C_GetFunctionList.
static void *rk_function_list_of(const char *path) {
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (h == NULL)
		return NULL;
	rk_get_list_fn get = (rk_get_list_fn)dlsym(h, "C_GetFunctionList");
	void *list = NULL;
	if (get == NULL || get(&list) != 0)
		list = NULL;
	dlclose(h); // the module stays loaded: its first user holds it
	return list;
}

// rk_gcm is one single-part CKM_AES_GCM operation: C_EncryptInit or
// C_DecryptInit, then C_Encrypt or C_Decrypt into out (capacity *outlen).
// A token that asks for a larger buffer than out (CKR_BUFFER_TOO_SMALL
// leaves the operation active) gets one here, at most three times, so the
// operation completes and ends; if the result does not fit out the answer
// is CKR_BUFFER_TOO_SMALL with its length. A failed allocation, or a
// token still asking for more after three tries, leaves the operation
// active (the session's next operation then fails and the pool replaces
// the session). Empty input is passed as a non-NULL pointer,
// as the binding does.
static rk_ulong rk_gcm(void *list, rk_ulong session, rk_ulong key, int encrypt, unsigned char *iv, rk_ulong iv_len,
		       unsigned char *aad, rk_ulong aad_len, rk_ulong tag_bits, unsigned char *in, rk_ulong in_len,
		       unsigned char *out, rk_ulong *out_len) {
	static unsigned char empty[1];
	rk_function_list *f = (rk_function_list *)list;
	rk_gcm_params p = {iv, iv_len, iv_len * 8, aad, aad_len, tag_bits};
	rk_mechanism m = {RK_CKM_AES_GCM, &p, sizeof p};
	rk_ulong cap = *out_len;
	if (in == NULL)
		in = empty;
	rk_ulong rv = encrypt ? f->encrypt_init(session, &m, key) : f->decrypt_init(session, &m, key);
	if (rv != 0)
		return rv;
	rk_op_fn op = encrypt ? f->encrypt : f->decrypt;
	rv = op(session, in, in_len, out, out_len);
	int too_long = 0;
	for (int tries = 0; rv == RK_CKR_BUFFER_TOO_SMALL && tries < 3; tries++) {
		rk_ulong size = *out_len > 0 ? *out_len : 1;
		unsigned char *tmp = malloc(size);
		if (tmp == NULL)
			return RK_CKR_HOST_MEMORY;
		rk_ulong got = size;
		rv = op(session, in, in_len, tmp, &got);
		*out_len = got;
		if (rv == 0 && got <= cap)
			memcpy(out, tmp, got);
		else if (rv == 0)
			too_long = 1;
		explicit_bzero(tmp, size);
		free(tmp);
	}
	if (too_long)
		rv = RK_CKR_BUFFER_TOO_SMALL;
	return rv;
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/miekg/pkcs11"

	"rekey/schemas"
)

// AES-GCM key operations (the aes-gcm wrap and unwrap, rewrap's hot path)
// are made with one call into C per operation: C_EncryptInit or
// C_DecryptInit, then a single C_Encrypt or C_Decrypt into a buffer of the
// known size. The binding's own calls (RawGCM, github.com/miekg/pkcs11)
// ask the token for the output size first (a third PKCS#11 call per
// operation: one more round trip on a network HSM) and allocate the
// mechanism, its parameters and the output in C memory, each with a cgo
// call (issue 14: ~3.8 us of a rewrap's ~51 us per DEK on SoftHSM). The
// function list is the module's own, taken from the copy of it this process
// loaded (dlopen RTLD_NOLOAD): the same module instance, so its sessions
// and handles are the binding's.

// gcmFuncs is a module's function list for call, nil where it could
// not be had (the binding's calls are used then).
type gcmFuncs struct{ list unsafe.Pointer }

func gcmFuncsOf(path string) *gcmFuncs {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	l := C.rk_function_list_of(cpath)
	if l == nil {
		return nil
	}
	return &gcmFuncs{list: l}
}

// gcmSlack is the room past the input's length the output buffer has:
// the tag on encryption; some tokens also ask for a block more than they
// write on decryption.
const gcmSlack = 32

// call is RawGCM through the module's function list.
func (g *gcmFuncs) call(sh pkcs11.SessionHandle, key pkcs11.ObjectHandle, encrypt bool, nonce, aad, in []byte) ([]byte, error) {
	if len(nonce) == 0 {
		return nil, fmt.Errorf("AES-GCM: empty nonce")
	}
	out := make([]byte, len(in)+gcmSlack)
	outLen := C.rk_ulong(len(out))
	enc := C.int(0)
	if encrypt {
		enc = 1
	}
	var aadp, inp *C.uchar
	if len(aad) > 0 {
		aadp = (*C.uchar)(unsafe.Pointer(&aad[0]))
	}
	if len(in) > 0 {
		inp = (*C.uchar)(unsafe.Pointer(&in[0]))
	}
	rv := C.rk_gcm(g.list, C.rk_ulong(sh), C.rk_ulong(key), enc,
		(*C.uchar)(unsafe.Pointer(&nonce[0])), C.rk_ulong(len(nonce)), aadp, C.rk_ulong(len(aad)),
		C.rk_ulong(schemas.TagSize*8), inp, C.rk_ulong(len(in)), (*C.uchar)(unsafe.Pointer(&out[0])), &outLen)
	if rv != 0 {
		clear(out)
		return nil, pkcs11.Error(rv)
	}
	if int(outLen) > len(out) {
		clear(out)
		return nil, pkcs11.Error(pkcs11.CKR_BUFFER_TOO_SMALL)
	}
	clear(out[outLen:])
	return out[:outLen:outLen], nil
}

// gcmOp is one single-part CKM_AES_GCM operation on session sh: through
// the module's function list when it was found, else the binding's calls.
func (t *token) gcmOp(sh pkcs11.SessionHandle, key pkcs11.ObjectHandle, encrypt bool, nonce, aad, in []byte) ([]byte, error) {
	if t.gcm != nil {
		return t.gcm.call(sh, key, encrypt, nonce, aad, in)
	}
	return RawGCM(t.p11, sh, key, encrypt, nonce, aad, in)
}
