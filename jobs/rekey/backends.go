package main

// The key and storage backends built into rekey: each registers its URI
// scheme with providers/keys or providers/storage when imported.
import (
	_ "rekey/hsmio"            // pkcs11: key-encryption keys
	_ "rekey/providers/alikms" // alikms:, alikms-instance: (Alibaba Cloud KMS)
	_ "rekey/providers/awskms" // awskms: (AWS KMS)
	_ "rekey/providers/ibmkp"  // ibmkp: (IBM Key Protect, Hyper Protect Crypto Services)
	_ "rekey/providers/local"  // plain paths
	_ "rekey/providers/oss"    // oss:// (Alibaba Cloud OSS)
	_ "rekey/providers/s3"     // s3:// (Amazon S3 and S3-compatible stores)
)
