// CRC-32C (Castagnoli) of fixed-length blocks of device memory, one block
// per thread: the device half of a verified transfer, so verification does
// not read device memory back over PCIe (the copy has that bandwidth).
// checksum.go joins the blocks' CRCs on the host. Regenerate the PTX that
// is embedded next to it with scripts/ptx.sh (needs nvcc: run it on the
// GPU machine).

extern "C" __global__ void crc32c_blocks(const unsigned char *p, unsigned long long n,
                                         unsigned long long block, unsigned int *out) {
	__shared__ unsigned int table[256];
	for (unsigned int i = threadIdx.x; i < 256; i += blockDim.x) {
		unsigned int c = i;
		for (int k = 0; k < 8; k++) {
			c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
		}
		table[i] = c;
	}
	__syncthreads();

	unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
	unsigned long long start = i * block;
	if (start >= n) {
		return;
	}
	unsigned long long end = start + block < n ? start + block : n;
	unsigned int crc = 0xFFFFFFFFu;
	unsigned long long j = start;
	for (; j < end && (((unsigned long long)(p + j)) & 15); j++) {
		crc = table[(crc ^ p[j]) & 0xFF] ^ (crc >> 8);
	}
	const uint4 *q = (const uint4 *)(p + j);
	unsigned long long words = (end - j) / 16;
	for (unsigned long long w = 0; w < words; w++) {
		uint4 v = q[w];
		unsigned int x[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
		for (int k = 0; k < 4; k++) {
			crc ^= x[k];
			crc = table[crc & 0xFF] ^ (crc >> 8);
			crc = table[crc & 0xFF] ^ (crc >> 8);
			crc = table[crc & 0xFF] ^ (crc >> 8);
			crc = table[crc & 0xFF] ^ (crc >> 8);
		}
	}
	for (j += words * 16; j < end; j++) {
		crc = table[(crc ^ p[j]) & 0xFF] ^ (crc >> 8);
	}
	out[i] = crc ^ 0xFFFFFFFFu;
}
