/* The churn traces of BENCHMARKS.md ("Trace replay") as plain system calls:
 * what the kernel itself takes. No argument: mmap 2M / touch every 4 KiB /
 * munmap, 2,000 times; any argument: touch 2M / MADV_DONTNEED, 3,000 times.
 * scripts/replay-vs-kernel builds and runs it. */
#define _GNU_SOURCE
#include <sys/mman.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(int argc,char**argv){
  int dontneed = argc>1;
  char *a=(char*)0x100000000000ULL; size_t len=2<<20;
  double t0=now();
  if(dontneed){ mmap(a,len,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE,-1,0); madvise(a,len,MADV_NOHUGEPAGE);}
  for(int i=0;i<(dontneed?3000:2000);i++){
    if(!dontneed){ mmap(a,len,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE,-1,0); madvise(a,len,MADV_NOHUGEPAGE);}
    for(size_t o=0;o<len;o+=4096) a[o]=1;
    if(dontneed) madvise(a,len,MADV_DONTNEED); else munmap(a,len);
  }
  if(dontneed) munmap(a,len);
  printf("%.3f s\n",now()-t0);
}
