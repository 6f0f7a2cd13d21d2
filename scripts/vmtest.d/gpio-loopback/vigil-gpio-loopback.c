// SPDX-License-Identifier: GPL-2.0
/*
 * vigil-gpio-loopback: a fake GPIO chip for Vigil's hardware-in-the-loop tests
 * (scripts/vmtest). Debian's 6.1 kernel has neither gpio-sim nor gpio-mockup.
 *
 * One chip labelled "vigil-loop" with eight named lines: OUT0..OUT3 (offsets 0-3)
 * are outputs, IN0..IN3 (offsets 4-7) are inputs wired to them: driving OUTn sets
 * INn to the same level. The chip has an irq domain (gpiolib's irqchip, no parent),
 * so the GPIO character device can do edge detection on the inputs: when an output
 * changes the level of its input, the input's interrupt is raised if its trigger
 * type asks for that edge and it is unmasked, exactly as a real chip's would be.
 * Levels are kept when a line is released, like a real latch: a process killed with
 * its output high leaves the input high.
 */
#include <linux/gpio/driver.h>
#include <linux/interrupt.h>
#include <linux/irq.h>
#include <linux/module.h>
#include <linux/platform_device.h>
#include <linux/spinlock.h>

#define PAIRS 4
#define NLINES (2 * PAIRS)

static const char *const line_names[NLINES] = {
	"OUT0", "OUT1", "OUT2", "OUT3", "IN0", "IN1", "IN2", "IN3",
};

struct loop {
	struct gpio_chip gc;
	spinlock_t lock;		/* guards the fields below */
	unsigned long level;		/* bit per line */
	unsigned int irq_type[NLINES];	/* IRQ_TYPE_EDGE_* per input */
	unsigned long unmasked;		/* bit per input */
};

static bool is_out(unsigned int off) { return off < PAIRS; }

static int loop_get_direction(struct gpio_chip *gc, unsigned int off)
{
	return is_out(off) ? GPIO_LINE_DIRECTION_OUT : GPIO_LINE_DIRECTION_IN;
}

static int loop_direction_input(struct gpio_chip *gc, unsigned int off)
{
	return is_out(off) ? -EPERM : 0;
}

static void loop_set(struct gpio_chip *gc, unsigned int off, int value)
{
	struct loop *l = gpiochip_get_data(gc);
	unsigned int in = off + PAIRS;
	bool fire = false, rising = value;
	unsigned long flags;

	if (!is_out(off))
		return;
	spin_lock_irqsave(&l->lock, flags);
	__assign_bit(off, &l->level, value);
	if (test_bit(in, &l->level) != !!value) {
		__assign_bit(in, &l->level, value);
		fire = test_bit(in, &l->unmasked) &&
		       (l->irq_type[in] & (rising ? IRQ_TYPE_EDGE_RISING : IRQ_TYPE_EDGE_FALLING));
	}
	spin_unlock_irqrestore(&l->lock, flags);
	if (fire)
		generic_handle_domain_irq_safe(gc->irq.domain, in);
}

static int loop_direction_output(struct gpio_chip *gc, unsigned int off, int value)
{
	if (!is_out(off))
		return -EPERM;
	loop_set(gc, off, value);
	return 0;
}

static int loop_get(struct gpio_chip *gc, unsigned int off)
{
	struct loop *l = gpiochip_get_data(gc);
	unsigned long flags;
	int v;

	spin_lock_irqsave(&l->lock, flags);
	v = test_bit(off, &l->level);
	spin_unlock_irqrestore(&l->lock, flags);
	return v;
}

static void loop_irq_mask(struct irq_data *d)
{
	struct gpio_chip *gc = irq_data_get_irq_chip_data(d);
	struct loop *l = gpiochip_get_data(gc);
	irq_hw_number_t hw = irqd_to_hwirq(d);
	unsigned long flags;

	spin_lock_irqsave(&l->lock, flags);
	__clear_bit(hw, &l->unmasked);
	spin_unlock_irqrestore(&l->lock, flags);
	gpiochip_disable_irq(gc, hw);
}

static void loop_irq_unmask(struct irq_data *d)
{
	struct gpio_chip *gc = irq_data_get_irq_chip_data(d);
	struct loop *l = gpiochip_get_data(gc);
	irq_hw_number_t hw = irqd_to_hwirq(d);
	unsigned long flags;

	gpiochip_enable_irq(gc, hw);
	spin_lock_irqsave(&l->lock, flags);
	__set_bit(hw, &l->unmasked);
	spin_unlock_irqrestore(&l->lock, flags);
}

static int loop_irq_set_type(struct irq_data *d, unsigned int type)
{
	struct gpio_chip *gc = irq_data_get_irq_chip_data(d);
	struct loop *l = gpiochip_get_data(gc);
	irq_hw_number_t hw = irqd_to_hwirq(d);
	unsigned long flags;

	if (is_out(hw) || (type & ~IRQ_TYPE_EDGE_BOTH))
		return -EINVAL; /* edges on the inputs only */
	spin_lock_irqsave(&l->lock, flags);
	l->irq_type[hw] = type;
	spin_unlock_irqrestore(&l->lock, flags);
	return 0;
}

static const struct irq_chip loop_irq_chip = {
	.name = "vigil-loop",
	.irq_mask = loop_irq_mask,
	.irq_unmask = loop_irq_unmask,
	.irq_set_type = loop_irq_set_type,
	.flags = IRQCHIP_IMMUTABLE,
	GPIOCHIP_IRQ_RESOURCE_HELPERS,
};

static int loop_probe(struct platform_device *pdev)
{
	struct device *dev = &pdev->dev;
	struct gpio_irq_chip *girq;
	struct loop *l;

	l = devm_kzalloc(dev, sizeof(*l), GFP_KERNEL);
	if (!l)
		return -ENOMEM;
	spin_lock_init(&l->lock);
	l->gc.label = "vigil-loop";
	l->gc.parent = dev;
	l->gc.owner = THIS_MODULE;
	l->gc.base = -1;
	l->gc.ngpio = NLINES;
	l->gc.names = line_names;
	l->gc.get_direction = loop_get_direction;
	l->gc.direction_input = loop_direction_input;
	l->gc.direction_output = loop_direction_output;
	l->gc.get = loop_get;
	l->gc.set = loop_set;

	girq = &l->gc.irq;
	gpio_irq_chip_set_chip(girq, &loop_irq_chip);
	girq->handler = handle_simple_irq;
	girq->default_type = IRQ_TYPE_NONE;
	girq->num_parents = 0;
	girq->parent_handler = NULL;

	return devm_gpiochip_add_data(dev, &l->gc, l);
}

static struct platform_driver loop_driver = {
	.driver = { .name = "vigil-gpio-loopback" },
	.probe = loop_probe,
};

static struct platform_device *loop_pdev;

static int __init loop_init(void)
{
	int err = platform_driver_register(&loop_driver);

	if (err)
		return err;
	loop_pdev = platform_device_register_simple("vigil-gpio-loopback", -1, NULL, 0);
	if (IS_ERR(loop_pdev)) {
		platform_driver_unregister(&loop_driver);
		return PTR_ERR(loop_pdev);
	}
	return 0;
}

static void __exit loop_exit(void)
{
	platform_device_unregister(loop_pdev);
	platform_driver_unregister(&loop_driver);
}

module_init(loop_init);
module_exit(loop_exit);
MODULE_DESCRIPTION("Vigil test chip: GPIO outputs looped back to inputs, with edge interrupts");
MODULE_LICENSE("GPL");
