w=$(mktemp -d); tar -C $w -xzf bin/cuda.tgz; cd $w/cuda
for P in 16 8 4 16; do
  GOMAXPROCS=$P ./memworker --backend cuda --store-dir $w/js$P > $OUT/worker-procs$P.log 2>&1 &
  pid=$!
  for i in $(seq 50); do ./memctl status --all >/dev/null 2>&1 && break; sleep 0.2; done
  ./membench --server nats://127.0.0.1:4222 --cases echo,pair,allocate+deallocate,get_status,sized --concurrency 8,64 > $OUT/procs$P-$RANDOM.txt 2>&1
  kill $pid; wait $pid
done
grep -H "same-size echo" $OUT/procs*.txt | sed 's/(medians of the rounds. ratios)//'
./cuda.test -test.run 'VirtualMemory|PinnedSegments|CopiesKeepContent' -test.count 1 > $OUT/cuda-vmm-test.txt 2>&1; echo "cuda tests rc $?"; tail -3 $OUT/cuda-vmm-test.txt
