/*
 * Test-only stand-in for Windows' bcryptprimitives.dll, for running ncx.exe under wine 8.
 *
 * Rust's standard library fills its random numbers (HashMap seeds) with ProcessPrng from
 * bcryptprimitives.dll, which Windows 10 and later have and wine 8 does not: without this file next
 * to the binary, every Rust program fails to start under wine 8. It implements that one function
 * with RtlGenRandom (advapi32's SystemFunction036), which wine has. Never shipped: .ci/run builds it
 * with mingw-w64 into the directory the Windows tests run from.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
