# Counts forever in rax: a guest that keeps its vCPU busy until `xl destroy`.
1:  inc rax
    jmp 1b
