/*
 * faultpkcs11: a PKCS#11 module that forwards to a real one (SoftHSM2 by
 * default) and makes a chosen share of chosen calls fail, or return wrong
 * data without an error, the way a faulty HSM does. Test tooling for rekey:
 * it must never be given to a production job.
 *
 * It exports one symbol, C_GetFunctionList, which returns a copy of the real
 * module's function list with the chosen entries replaced by wrappers.
 *
 * Configuration, read once per loaded instance (at the first
 * C_GetFunctionList or C_Initialize), from the environment; a file named
 * "<path of this library>.env" with KEY=VALUE lines, if present, overrides
 * the environment (so two copies of the library in one process can be
 * configured differently):
 *
 *   REKEY_FAULT_MODULE  real module (default /usr/lib/softhsm/libsofthsm2.so)
 *   REKEY_FAULT_CALLS   comma list of calls to disturb, any of: C_OpenSession,
 *                       C_Login, C_FindObjectsInit, C_GetAttributeValue,
 *                       C_EncryptInit, C_Encrypt, C_DecryptInit, C_Decrypt,
 *                       C_WrapKey, C_UnwrapKey, C_GenerateRandom
 *                       (empty: forward everything untouched)
 *   REKEY_FAULT_MODE    fail (default): the call returns REKEY_FAULT_CODE;
 *                       corrupt: the call runs, and when it succeeded with
 *                       output one bit of the output is flipped
 *   REKEY_FAULT_RATE    share of eligible calls disturbed, 0..1 (default 1)
 *   REKEY_FAULT_CODE    fail mode's return value: a CKR_ name below or a
 *                       number (default CKR_DEVICE_ERROR)
 *   REKEY_FAULT_SEED    which calls are chosen is a function of the seed and
 *                       the call's index only (default 1)
 *   REKEY_FAULT_AFTER   the first N eligible calls are never disturbed
 *   REKEY_FAULT_MAX     at most N calls are disturbed (0: no limit)
 *   REKEY_FAULT_LOG     file to append one line per disturbed call to
 *                       ("<call> <mode> <index>"; never any data)
 *
 * Eligible calls: in fail mode every call of the chosen functions; in
 * corrupt mode the calls that return data into a caller buffer (C_Decrypt,
 * C_Encrypt, C_WrapKey, C_GenerateRandom, C_GetAttributeValue with a value
 * buffer) and C_UnwrapKey. A corrupted C_UnwrapKey creates the right object,
 * and the next C_GetAttributeValue that reads its CKA_VALUE gets one bit
 * flipped: to the caller, the unwrap returned a wrong key. Functions without
 * output (C_Login, C_*Init, C_OpenSession) are left alone in corrupt mode.
 *
 * A failed C_Encrypt/C_Decrypt ends the real operation first (it is run into
 * a scratch buffer that is wiped), so the session stays usable, as it would
 * after a real error.
 *
 * The real module is shared with every other user in the process: if it is
 * initialized already, C_Initialize succeeds here, and C_Finalize finalizes
 * it only if this instance initialized it.
 */
#define CK_PTR *
#define CK_DEFINE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType(*name)
#define CK_CALLBACK_FUNCTION(returnType, name) returnType(*name)
#ifndef NULL_PTR
#define NULL_PTR 0
#endif

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pkcs11.h"

#define EXPORT __attribute__((visibility("default")))

enum {
	F_OPENSESSION,
	F_LOGIN,
	F_FINDOBJECTSINIT,
	F_GETATTRIBUTEVALUE,
	F_ENCRYPTINIT,
	F_ENCRYPT,
	F_DECRYPTINIT,
	F_DECRYPT,
	F_WRAPKEY,
	F_UNWRAPKEY,
	F_GENERATERANDOM,
	F_COUNT
};

static const char *const fnames[F_COUNT] = {
	"C_OpenSession", "C_Login", "C_FindObjectsInit", "C_GetAttributeValue", "C_EncryptInit", "C_Encrypt",
	"C_DecryptInit", "C_Decrypt", "C_WrapKey", "C_UnwrapKey", "C_GenerateRandom",
};

static const struct {
	const char *name;
	CK_RV rv;
} codes[] = {
	{"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
	{"CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY},
	{"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
	{"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED},
	{"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
	{"CKR_HOST_MEMORY", CKR_HOST_MEMORY},
	{"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
	{"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
	{"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
	{"CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID},
	{"CKR_PIN_INCORRECT", CKR_PIN_INCORRECT},
	{"CKR_ENCRYPTED_DATA_INVALID", CKR_ENCRYPTED_DATA_INVALID},
	{"CKR_WRAPPED_KEY_INVALID", CKR_WRAPPED_KEY_INVALID},
};

static struct {
	char module[4096];
	int enabled[F_COUNT];
	int corrupt;
	double rate;
	CK_RV code;
	uint64_t seed, after, max;
	int logfd;
	char err[8704]; /* configuration or load error, reported by C_Initialize */
	CK_RV errcode;
} cfg;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static void *real_handle;
static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST list;
static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;
static int initialized, owns_real;
static atomic_uint_fast64_t eligible, injected;

/* Objects made by corrupted C_UnwrapKey calls whose value is yet to be read. */
#define MAX_TAINTED 256
static pthread_mutex_t taint_mu = PTHREAD_MUTEX_INITIALIZER;
static CK_OBJECT_HANDLE tainted[MAX_TAINTED];
static int ntainted;

/* ---- configuration ---- */

static char sidecar[8192]; /* "<library>.env" contents, lines KEY=VALUE */

static void read_sidecar(void)
{
	Dl_info info;
	if (!dladdr((void *)&C_GetFunctionList, &info) || info.dli_fname == NULL)
		return;
	char path[4200];
	if (snprintf(path, sizeof path, "%s.env", info.dli_fname) >= (int)sizeof path)
		return;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, sidecar, sizeof sidecar - 1);
	close(fd);
	sidecar[n > 0 ? n : 0] = 0;
}

/* setting returns the value of key: the sidecar's line, else the
 * environment's, else NULL. The result is copied into buf. */
static const char *setting(const char *key, char *buf, size_t len)
{
	size_t kl = strlen(key);
	for (const char *p = sidecar; *p;) {
		const char *end = strchr(p, '\n');
		size_t ll = end ? (size_t)(end - p) : strlen(p);
		if (ll > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
			size_t vl = ll - kl - 1;
			if (vl >= len)
				vl = len - 1;
			memcpy(buf, p + kl + 1, vl);
			buf[vl] = 0;
			if (vl > 0 && buf[vl - 1] == '\r')
				buf[vl - 1] = 0;
			return buf;
		}
		p += ll + (end ? 1 : 0);
	}
	const char *v = getenv(key);
	if (v == NULL)
		return NULL;
	snprintf(buf, len, "%s", v);
	return buf;
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || end == s || *end || s[0] == '-')
		return -1;
	*out = v;
	return 0;
}

static void configure(void)
{
	char buf[4096];
	read_sidecar();
	cfg.logfd = -1;
	cfg.rate = 1;
	cfg.code = CKR_DEVICE_ERROR;
	cfg.seed = 1;
	snprintf(cfg.module, sizeof cfg.module, "%s",
		 setting("REKEY_FAULT_MODULE", buf, sizeof buf) ? buf : "/usr/lib/softhsm/libsofthsm2.so");
	if (setting("REKEY_FAULT_CALLS", buf, sizeof buf)) {
		char *save = NULL;
		for (char *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
			int found = 0;
			for (int i = 0; i < F_COUNT; i++) {
				if (strcmp(tok, fnames[i]) == 0) {
					cfg.enabled[i] = found = 1;
				}
			}
			if (!found) {
				snprintf(cfg.err, sizeof cfg.err,
					 "REKEY_FAULT_CALLS: unknown call %s (known: C_OpenSession, C_Login, C_FindObjectsInit, "
					 "C_GetAttributeValue, C_EncryptInit, C_Encrypt, C_DecryptInit, C_Decrypt, C_WrapKey, "
					 "C_UnwrapKey, C_GenerateRandom)",
					 tok);
				return;
			}
		}
	}
	if (setting("REKEY_FAULT_MODE", buf, sizeof buf) && buf[0]) {
		if (strcmp(buf, "corrupt") == 0)
			cfg.corrupt = 1;
		else if (strcmp(buf, "fail") != 0) {
			snprintf(cfg.err, sizeof cfg.err, "REKEY_FAULT_MODE: %s is not fail or corrupt", buf);
			return;
		}
	}
	if (setting("REKEY_FAULT_RATE", buf, sizeof buf) && buf[0]) {
		char *end;
		double r = strtod(buf, &end);
		if (end == buf || *end || !(r >= 0 && r <= 1)) {
			snprintf(cfg.err, sizeof cfg.err, "REKEY_FAULT_RATE: %s is not a share between 0 and 1", buf);
			return;
		}
		cfg.rate = r;
	}
	if (setting("REKEY_FAULT_CODE", buf, sizeof buf) && buf[0]) {
		uint64_t v;
		int found = 0;
		for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
			if (strcmp(buf, codes[i].name) == 0) {
				cfg.code = codes[i].rv;
				found = 1;
			}
		}
		if (!found) {
			if (parse_u64(buf, &v) != 0 || v == CKR_OK) {
				snprintf(cfg.err, sizeof cfg.err, "REKEY_FAULT_CODE: %s is not a CKR_ name this module knows nor a non-zero number", buf);
				return;
			}
			cfg.code = (CK_RV)v;
		}
	}
	struct {
		const char *key;
		uint64_t *dst;
	} nums[] = {{"REKEY_FAULT_SEED", &cfg.seed}, {"REKEY_FAULT_AFTER", &cfg.after}, {"REKEY_FAULT_MAX", &cfg.max}};
	for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
		if (setting(nums[i].key, buf, sizeof buf) && buf[0] && parse_u64(buf, nums[i].dst) != 0) {
			snprintf(cfg.err, sizeof cfg.err, "%s: %s is not a non-negative integer", nums[i].key, buf);
			return;
		}
	}
	if (setting("REKEY_FAULT_LOG", buf, sizeof buf) && buf[0]) {
		cfg.logfd = open(buf, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		if (cfg.logfd < 0) {
			snprintf(cfg.err, sizeof cfg.err, "REKEY_FAULT_LOG: cannot open %s: %s", buf, strerror(errno));
			return;
		}
	}
}

/* A bad setting fails C_Initialize with CKR_ARGUMENTS_BAD. */
static void configure_checked(void)
{
	configure();
	if (cfg.err[0])
		cfg.errcode = CKR_ARGUMENTS_BAD;
}

/* ---- choosing the calls ---- */

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

/* decide counts one eligible call of function f and reports whether to
 * disturb it; *hash gets bits for choosing what to flip. */
static int decide(int f, uint64_t *hash)
{
	if (!cfg.enabled[f])
		return 0;
	uint64_t n = atomic_fetch_add(&eligible, 1);
	if (n < cfg.after)
		return 0;
	uint64_t h = splitmix64(cfg.seed ^ splitmix64(n));
	if (cfg.rate < 1) {
		/* h's top 53 bits as a uniform share in [0,1) */
		if ((double)(h >> 11) / 9007199254740992.0 >= cfg.rate)
			return 0;
	}
	if (cfg.max) {
		uint64_t k = atomic_fetch_add(&injected, 1);
		if (k >= cfg.max)
			return 0;
	} else {
		atomic_fetch_add(&injected, 1);
	}
	if (hash)
		*hash = splitmix64(h);
	if (cfg.logfd >= 0) {
		char line[96];
		int l = snprintf(line, sizeof line, "%s %s %llu\n", fnames[f], cfg.corrupt ? "corrupt" : "fail",
				 (unsigned long long)n);
		if (l > 0)
			(void)!write(cfg.logfd, line, (size_t)l);
	}
	return 1;
}

static void flip(CK_BYTE_PTR p, CK_ULONG len, uint64_t h)
{
	if (p && len)
		p[(h >> 8) % len] ^= (CK_BYTE)(1u << (h & 7));
}

/* ---- wrappers ---- */

static CK_RV w_Initialize(CK_VOID_PTR args)
{
	if (cfg.err[0]) {
		fprintf(stderr, "faultpkcs11: %s\n", cfg.err);
		return cfg.errcode;
	}
	pthread_mutex_lock(&init_mu);
	CK_RV rv;
	if (initialized) {
		rv = CKR_CRYPTOKI_ALREADY_INITIALIZED;
	} else {
		rv = real->C_Initialize(args);
		if (rv == CKR_OK) {
			owns_real = 1;
		} else if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			/* Another user of the real module in this process. */
			owns_real = 0;
			rv = CKR_OK;
		}
		if (rv == CKR_OK)
			initialized = 1;
	}
	pthread_mutex_unlock(&init_mu);
	return rv;
}

static CK_RV w_Finalize(CK_VOID_PTR reserved)
{
	pthread_mutex_lock(&init_mu);
	CK_RV rv = CKR_OK;
	if (!initialized) {
		rv = CKR_CRYPTOKI_NOT_INITIALIZED;
	} else {
		if (owns_real)
			rv = real->C_Finalize(reserved);
		initialized = owns_real = 0;
	}
	pthread_mutex_unlock(&init_mu);
	return rv;
}

static CK_RV w_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR ph)
{
	if (!cfg.corrupt && decide(F_OPENSESSION, NULL))
		return cfg.code;
	return real->C_OpenSession(slot, flags, app, notify, ph);
}

static CK_RV w_Login(CK_SESSION_HANDLE s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pinlen)
{
	if (!cfg.corrupt && decide(F_LOGIN, NULL))
		return cfg.code;
	return real->C_Login(s, user, pin, pinlen);
}

static CK_RV w_FindObjectsInit(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
	if (!cfg.corrupt && decide(F_FINDOBJECTSINIT, NULL))
		return cfg.code;
	return real->C_FindObjectsInit(s, t, n);
}

static int untaint(CK_OBJECT_HANDLE h)
{
	int found = 0;
	pthread_mutex_lock(&taint_mu);
	for (int i = 0; i < ntainted; i++) {
		if (tainted[i] == h) {
			tainted[i] = tainted[--ntainted];
			found = 1;
			break;
		}
	}
	pthread_mutex_unlock(&taint_mu);
	return found;
}

static CK_RV w_GetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
	if (!cfg.corrupt && decide(F_GETATTRIBUTEVALUE, NULL))
		return cfg.code;
	CK_RV rv = real->C_GetAttributeValue(s, o, t, n);
	if (rv != CKR_OK)
		return rv;
	int has_value = 0;
	CK_ULONG vi = 0;
	for (CK_ULONG i = 0; i < n; i++) {
		if (t[i].type == CKA_VALUE && t[i].pValue != NULL && t[i].ulValueLen != CK_UNAVAILABLE_INFORMATION &&
		    t[i].ulValueLen > 0) {
			has_value = 1;
			vi = i;
		}
	}
	if (!has_value)
		return rv;
	if (untaint(o)) {
		/* The value of a key a corrupted C_UnwrapKey made. */
		flip(t[vi].pValue, t[vi].ulValueLen, splitmix64(o ^ cfg.seed));
		return rv;
	}
	uint64_t h;
	if (cfg.corrupt && decide(F_GETATTRIBUTEVALUE, &h))
		flip(t[vi].pValue, t[vi].ulValueLen, h);
	return rv;
}

static CK_RV w_DestroyObject(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
	CK_RV rv = real->C_DestroyObject(s, o);
	untaint(o);
	return rv;
}

static CK_RV w_EncryptInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
	if (!cfg.corrupt && decide(F_ENCRYPTINIT, NULL))
		return cfg.code;
	return real->C_EncryptInit(s, m, k);
}

static CK_RV w_DecryptInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
	if (!cfg.corrupt && decide(F_DECRYPTINIT, NULL))
		return cfg.code;
	return real->C_DecryptInit(s, m, k);
}

typedef CK_RV (*single_part)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);

/* end_operation finishes the active single-part operation of s into a
 * scratch buffer and wipes it: the caller sees an error, and the session is
 * left without an active operation, as after a real error. */
static void end_operation(single_part fn, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inlen)
{
	CK_ULONG len = 0;
	if (fn(s, in, inlen, NULL, &len) != CKR_OK)
		return; /* the operation ended with that error */
	CK_BYTE_PTR tmp = calloc(1, len ? len : 1);
	if (tmp == NULL)
		return;
	(void)fn(s, in, inlen, tmp, &len);
	memset(tmp, 0, len);
	free(tmp);
}

static CK_RV single(int f, single_part fn, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out,
		    CK_ULONG_PTR outlen)
{
	if (!cfg.corrupt) {
		if (decide(f, NULL)) {
			end_operation(fn, s, in, inlen);
			return cfg.code;
		}
		return fn(s, in, inlen, out, outlen);
	}
	CK_RV rv = fn(s, in, inlen, out, outlen);
	uint64_t h;
	if (rv == CKR_OK && out != NULL && outlen != NULL && *outlen > 0 && decide(f, &h))
		flip(out, *outlen, h);
	return rv;
}

static CK_RV w_Encrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
	return single(F_ENCRYPT, real->C_Encrypt, s, in, inlen, out, outlen);
}

static CK_RV w_Decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
	return single(F_DECRYPT, real->C_Decrypt, s, in, inlen, out, outlen);
}

static CK_RV w_WrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wk, CK_OBJECT_HANDLE k, CK_BYTE_PTR out,
		       CK_ULONG_PTR outlen)
{
	if (!cfg.corrupt && decide(F_WRAPKEY, NULL))
		return cfg.code;
	CK_RV rv = real->C_WrapKey(s, m, wk, k, out, outlen);
	uint64_t h;
	if (cfg.corrupt && rv == CKR_OK && out != NULL && outlen != NULL && *outlen > 0 && decide(F_WRAPKEY, &h))
		flip(out, *outlen, h);
	return rv;
}

static CK_RV w_UnwrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE uk, CK_BYTE_PTR in, CK_ULONG inlen,
			 CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR ph)
{
	if (!cfg.corrupt && decide(F_UNWRAPKEY, NULL))
		return cfg.code;
	CK_RV rv = real->C_UnwrapKey(s, m, uk, in, inlen, t, n, ph);
	if (cfg.corrupt && rv == CKR_OK && ph != NULL && decide(F_UNWRAPKEY, NULL)) {
		pthread_mutex_lock(&taint_mu);
		if (ntainted == MAX_TAINTED) /* forget the oldest */
			memmove(tainted, tainted + 1, sizeof tainted[0] * --ntainted);
		tainted[ntainted++] = *ph;
		pthread_mutex_unlock(&taint_mu);
	}
	return rv;
}

static CK_RV w_GenerateRandom(CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG len)
{
	if (!cfg.corrupt && decide(F_GENERATERANDOM, NULL))
		return cfg.code;
	CK_RV rv = real->C_GenerateRandom(s, out, len);
	uint64_t h;
	if (cfg.corrupt && rv == CKR_OK && out != NULL && len > 0 && decide(F_GENERATERANDOM, &h))
		flip(out, len, h);
	return rv;
}

static CK_RV fail_Initialize(CK_VOID_PTR args)
{
	(void)args;
	fprintf(stderr, "faultpkcs11: %s\n", cfg.err);
	return cfg.errcode;
}

static CK_RV fail_Finalize(CK_VOID_PTR reserved)
{
	(void)reserved;
	return CKR_CRYPTOKI_NOT_INITIALIZED;
}

static void load(void)
{
	configure_checked();
	real_handle = dlopen(cfg.module, RTLD_NOW | RTLD_LOCAL);
	CK_C_GetFunctionList get = NULL;
	if (real_handle == NULL) {
		if (!cfg.err[0])
			snprintf(cfg.err, sizeof cfg.err, "cannot load the real module %s: %s", cfg.module, dlerror());
	} else {
		get = (CK_C_GetFunctionList)dlsym(real_handle, "C_GetFunctionList");
		if (get == NULL && !cfg.err[0])
			snprintf(cfg.err, sizeof cfg.err, "%s has no C_GetFunctionList", cfg.module);
	}
	if (get == NULL || get(&real) != CKR_OK || real == NULL) {
		if (!cfg.err[0])
			snprintf(cfg.err, sizeof cfg.err, "C_GetFunctionList of %s failed", cfg.module);
		cfg.errcode = CKR_GENERAL_ERROR;
		/* A list whose C_Initialize reports why; callers stop there. */
		memset(&list, 0, sizeof list);
		list.version.major = 2;
		list.version.minor = 40;
		list.C_Initialize = fail_Initialize;
		list.C_Finalize = fail_Finalize;
		real = NULL;
		return;
	}
	list = *real;
	list.C_Initialize = w_Initialize;
	list.C_Finalize = w_Finalize;
	list.C_GetAttributeValue = w_GetAttributeValue; /* also delivers corrupted unwraps */
	list.C_DestroyObject = w_DestroyObject;
	list.C_OpenSession = w_OpenSession;
	list.C_Login = w_Login;
	list.C_FindObjectsInit = w_FindObjectsInit;
	list.C_EncryptInit = w_EncryptInit;
	list.C_Encrypt = w_Encrypt;
	list.C_DecryptInit = w_DecryptInit;
	list.C_Decrypt = w_Decrypt;
	list.C_WrapKey = w_WrapKey;
	list.C_UnwrapKey = w_UnwrapKey;
	list.C_GenerateRandom = w_GenerateRandom;
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp)
{
	if (pp == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_once(&load_once, load);
	*pp = &list;
	return CKR_OK;
}
