/*
 * kvmkit test guest: everything that runs at CPL0.
 *
 * Under kvm_pvm every CPL0 (and real-mode) instruction is emulated at about
 * 1 us each, and the emulator cannot run SSE. So CPL0 is assembly only and
 * as short as possible: page tables, GDT and IDT are built by the assembler;
 * at run time each CPU only fills in its TSS, loads its descriptors and
 * drops to CPL3 with iretq. The BSP path is about 60 instructions.
 *
 * .bss is not cleared here: the loader (kvmkit, QEMU) hands over zeroed RAM
 * and the linker script marks .bss NOLOAD, so it is zero on entry.
 *
 * Names in braces are const operands supplied by main.rs from kvmkit-guest-abi.
 */

.set MAX_CPUS, {max_cpus}
.set DEBUG_PORT, {debug_port}
.set MILESTONE_ENTRY, {milestone_entry}
.set REPORT_PORT, {report_port}
.set EXIT_PORT, {exit_port}
.set REPORT_MAGIC, {report_magic}
.set REPORT_KIND_EXCEPTION, {report_kind_exception}
.set REPORT_CPU, {report_cpu}
.set REPORT_NAME, {report_name}
.set REPORT_ARG, {report_arg}
.set REPORT_VALUE, {report_value}
.set REPORT_TICKS, {report_ticks}
.set REPORT_SIZE, {report_size}
.set GED_SLEEP_ADDR, {ged_sleep_addr}
.set GED_SLEEP_S5, {ged_sleep_s5}
.set I8042_PORT, {i8042_port}
.set I8042_RESET, {i8042_reset}

.set ISR_BASE, 0x100000          /* guest.ld places .isr_stubs here */
.set ISR_ERRCODE_MASK, 0x60227d00 /* vectors 8,10-14,17,21,29,30 push an error code */
.set KSTACK_SIZE, 0x1000
.set USTACK_SIZE, {user_stack_size}
.set TSS_IOPB, 104               /* I/O bitmap right after the 104-byte TSS */
.set TSS_LIMIT, 104 + 8192       /* bitmap for all 65536 ports + the 0xff byte */
.set TSS_STRIDE, 0x2080
.set SEL_KCODE64, 0x08
.set SEL_KDATA, 0x10
.set SEL_KCODE32, 0x18
.set SEL_UDATA, 0x23
.set SEL_UCODE64, 0x2b
.set SEL_TSS0, 0x30
.set CR0_VALUE, 0x80010033       /* PG WP NE ET MP PE; EM and TS clear */
.set CR4_VALUE, 0x620            /* OSXMMEXCPT OSFXSR PAE */
.set EFER_MSR, 0xc0000080
.set EFER_LME, 0x100
.set PTE_FLAGS, 0x7              /* present, writable, user */
.set PDE_2M_FLAGS, 0x87          /* present, writable, user, 2 MiB page */

/* ---- PVH note: XEN_ELFNOTE_PHYS32_ENTRY ---------------------------------- */
.section .note.Xen, "a", @note
.p2align 2
.long 4                          /* namesz */
.long 8                          /* descsz */
.long 18                         /* XEN_ELFNOTE_PHYS32_ENTRY */
.asciz "Xen"
.p2align 2
.quad pvh_entry

/* ---- Exception stubs, 16 bytes each, at ISR_BASE ------------------------- */
.section .isr_stubs, "ax", @progbits
.code64
.balign 16
.globl isr_stubs
isr_stubs:
.set isr_vec, 0
.rept 32
    .balign 16
    .if ((ISR_ERRCODE_MASK >> isr_vec) & 1) == 0
    pushq $0
    .endif
    pushq $isr_vec
    jmp isr_common
    .set isr_vec, isr_vec + 1
.endr

/* ---- 32-bit entry points and the switch to long mode --------------------- */
.section .text.boot, "ax", @progbits
.code32
.globl pvh_entry
pvh_entry:
    /* PVH: 32-bit flat protected mode, paging off, ebx = hvm_start_info. */
    movb $MILESTONE_ENTRY, %al
    outb %al, $DEBUG_PORT
    movl %ebx, %esi
    xorl %ebp, %ebp              /* ebp = 0: bootstrap processor */
    jmp enter_long_mode

ap_entry32:
    /* From the real-mode trampoline: CS = SEL_KCODE32, our GDT loaded. */
    movl $SEL_KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %esi, %esi
    movl $1, %ebp                /* ebp = 1: application processor */

enter_long_mode:
    lgdt gdt_ptr
    movl $pml4, %eax
    movl %eax, %cr3
    movl $CR4_VALUE, %eax
    movl %eax, %cr4
    movl $EFER_MSR, %ecx
    movl $EFER_LME, %eax
    xorl %edx, %edx
    wrmsr
    movl $CR0_VALUE, %eax
    movl %eax, %cr0
    ljmp $SEL_KCODE64, $long_mode

.code64
long_mode:
    movl $SEL_KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    movl %esi, %r13d             /* start_info (0 on APs) */
    /*
     * CPUID here, not at CPL3: under PVM a CPL3 cpuid runs natively and
     * sees the host CPU, while this one is emulated and sees the vCPU.
     */
    movl $1, %eax
    cpuid
    shrl $24, %ebx
    movl %ebx, %r14d             /* initial APIC id */
    xorl %r15d, %r15d            /* TSC kHz from the hypervisor leaf, 0 = unknown */
    xorl %r12d, %r12d            /* BSP: cpu index 0 */
    testl %ebp, %ebp
    jnz 2f
    btl $31, %ecx                /* running under a hypervisor? */
    jnc cpu_setup
    movl $0x40000000, %eax
    cpuid
    cmpl $0x40000010, %eax
    jb cpu_setup
    movl $0x40000010, %eax
    cpuid
    movl %eax, %r15d
    jmp cpu_setup
2:
    movl $1, %r12d
    lock xaddl %r12d, next_cpu_index
    cmpl $MAX_CPUS, %r12d
    jae park

/* r12 = cpu index, r13 = start_info or 0, r14 = APIC id, r15 = TSC kHz or 0. */
cpu_setup:
    leaq 1(%r12), %rax
    shlq $12, %rax               /* (index + 1) * KSTACK_SIZE */
    leaq kernel_stacks-16(%rax), %rsp
    movq %r12, (%rsp)            /* the index, at RSP0, for isr_common */

    imulq $TSS_STRIDE, %r12, %rbx
    addq $tss_area, %rbx
    movq %rsp, 4(%rbx)           /* TSS.RSP0 */
    movw $TSS_IOPB, 102(%rbx)    /* I/O map base; the bitmap itself is zero (.bss) */
    movb $0xff, TSS_LIMIT(%rbx)  /* the byte that ends the bitmap */

    /* 64-bit available-TSS descriptor; the base is below 4 GiB. */
    movl %ebx, %eax
    andl $0xffffff, %eax
    shlq $16, %rax
    movl %ebx, %edx
    shrl $24, %edx
    shlq $56, %rdx
    orq %rdx, %rax
    movabsq $((0x89 << 40) | TSS_LIMIT), %rdx
    orq %rdx, %rax
    movq %r12, %rcx
    shlq $4, %rcx
    movq %rax, gdt_tss(%rcx)
    leal SEL_TSS0(%rcx), %eax
    ltr %ax
    lidt idt_ptr

    /* iretq to user_main(index, start_info, apic_id, tsc_khz) at CPL3, interrupts off. */
    leaq 1(%r12), %rax
    shlq $15, %rax               /* (index + 1) * USTACK_SIZE */
    leaq user_stacks-8(%rax), %rax
    pushq $SEL_UDATA
    pushq %rax
    pushq $2
    pushq $SEL_UCODE64
    pushq $user_main
    movq %r12, %rdi
    movq %r13, %rsi
    movq %r14, %rdx
    movq %r15, %rcx
    iretq

park:
    cli
    hlt
    jmp park

/*
 * Common exception path: report, exit, power off. Stack: vector, error
 * code, RIP, CS, RFLAGS, RSP, SS. From CPL3 the frame sits right below RSP0,
 * where cpu_setup stored the CPU index.
 */
isr_common:
    movl $exception_report, %edi
    movl $-1, %eax
    testb $3, 24(%rsp)
    jz 1f
    movl 56(%rsp), %eax
1:  movl %eax, REPORT_CPU(%rdi)
    movq (%rsp), %rax
    movq %rax, REPORT_ARG(%rdi)
    movq 16(%rsp), %rax
    movq %rax, REPORT_VALUE(%rdi)
    movq 8(%rsp), %rax
    movq %rax, REPORT_TICKS(%rdi)
    movl %edi, %eax
    movw $REPORT_PORT, %dx
    outl %eax, %dx
    movl (%rsp), %eax
    addl $0x80, %eax
    movw $EXIT_PORT, %dx
    outl %eax, %dx
    movb $GED_SLEEP_S5, %al      /* the same S5 byte to port 0x600: Cloud Hypervisor */
    outb %al, %dx
    movl $GED_SLEEP_ADDR, %eax
    movb $GED_SLEEP_S5, (%rax)
    movb $I8042_RESET, %al
    outb %al, $I8042_PORT
    jmp park

/* ---- AP trampoline: copied to 0x8000, entered in real mode at 0800:0000 -- */
.section .rodata.trampoline, "a", @progbits
.code16
.balign 16
.globl ap_trampoline_start
.globl ap_trampoline_end
ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (tramp_gdt_ptr - ap_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $SEL_KCODE32, $ap_entry32
.balign 8
tramp_gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
ap_trampoline_end:
.code64

/* ---- Descriptor tables and page tables, built by the assembler ----------- */
.section .data.boot, "aw", @progbits
.balign 4096
/* 4 GiB identity map with 2 MiB pages; User set at every level. */
pml4:
    .quad pdpt + PTE_FLAGS
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0000 + PTE_FLAGS
    .quad pd + 0x1000 + PTE_FLAGS
    .quad pd + 0x2000 + PTE_FLAGS
    .quad pd + 0x3000 + PTE_FLAGS
    .fill 508, 8, 0
pd:
.set pd_i, 0
.rept 2048
    .quad (pd_i << 21) | PDE_2M_FLAGS
    .set pd_i, pd_i + 1
.endr

.balign 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff     /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff     /* 0x10 kernel data */
    .quad 0x00cf9a000000ffff     /* 0x18 kernel code, 32-bit (AP trampoline) */
    .quad 0x00cff2000000ffff     /* 0x20 user data */
    .quad 0x00affa000000ffff     /* 0x28 user code, 64-bit */
gdt_tss:
    .fill MAX_CPUS * 2, 8, 0     /* 0x30 + 16 * i: TSS of CPU i, set at run time */
gdt_end:

.balign 8
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

.balign 16
idt:
.set idt_vec, 0
.rept 32
    .word (ISR_BASE + idt_vec * 16) & 0xffff
    .word SEL_KCODE64
    .byte 0
    .byte 0x8e                   /* present, DPL0, 64-bit interrupt gate */
    .word (ISR_BASE + idt_vec * 16) >> 16
    .long 0
    .long 0
    .set idt_vec, idt_vec + 1
.endr
idt_end:

.balign 8
idt_ptr:
    .word idt_end - idt - 1
    .quad idt

.balign 4
next_cpu_index:
    .long 1                      /* APs take 1, 2, ... with lock xadd */

.balign 16
exception_report:
    .long REPORT_MAGIC
    .long REPORT_KIND_EXCEPTION
    .long 0xffffffff
    .long 0
    .ascii "exception"
    .fill REPORT_SIZE - REPORT_NAME - 9, 1, 0

.section .bss.boot, "aw", @nobits
.balign 4096
kernel_stacks:
    .skip MAX_CPUS * KSTACK_SIZE
.globl user_stacks
user_stacks:
    .skip MAX_CPUS * USTACK_SIZE
tss_area:
    .skip MAX_CPUS * TSS_STRIDE

.text
